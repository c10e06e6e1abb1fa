"""Evaluate a finished run: ``python val.py logdir=<run dir> [checkpoint=best|last] [R=-1]``.

Rebuilds model and data from the run's config.yaml, loads the checkpoint, recomputes the
metrics with the retrieval engine, prints them and writes <run dir>/eval_<checkpoint>.json.
"""

import hydra
from omegaconf import DictConfig

import utils.config  # noqa: F401  (registers the safe resolvers)
from utils.compose.experiment import validate
from utils.errors import exit_on_user_error


@hydra.main(config_path="configs", config_name="val", version_base=None)
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    validate(cfg)


if __name__ == "__main__":
    main()
