"""Train a hashing model: ``python main_v2.py model=sdc dataset=cifar10 model.nbit=64``.

With no argument: SDC, 64 bits, on scikit-learn's bundled 8x8 digits (no download).
Sweeps: ``python main_v2.py -m model.nbit=16,32,64 seed=1,2`` then
``python scripts/summarize.py logs/multirun/<time>``.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import utils.config  # noqa: F401  (registers the safe resolvers before Hydra composes)
from utils.experiment import exit_on_user_error, train


@hydra.main(config_path="configs", config_name="train", version_base=None)
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    metrics = train(cfg, overrides=list(HydraConfig.get().overrides.task))
    return metrics["last"][metrics["main_metric"]]


if __name__ == "__main__":
    main()
