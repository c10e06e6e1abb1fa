"""Train a hashing model: ``python main_v2.py model=sdc dataset=cifar10 model.nbit=64``.

With no argument: SDC, 64 bits, on scikit-learn's bundled 8x8 digits (no download).
Sweeps: ``python main_v2.py -m model.nbit=16,32,64 seed=1,2`` then
``python scripts/summarize.py logs/multirun/<time>``.
"""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import utils.config  # noqa: F401  (registers the safe resolvers before Hydra composes)
from utils.compose.experiment import train
from utils.distributed import prepare_launch
from utils.errors import exit_on_user_error

# Launcher jobs (submitit's local and SLURM processes) unpickle this module's task function:
# they need the project on their import path, whatever folder they start in.
_ROOT = str(Path(__file__).resolve().parent)
if _ROOT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p
    )
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


@hydra.main(config_path="configs", config_name="train", version_base=None)
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    metrics = train(cfg, overrides=list(HydraConfig.get().overrides.task))
    return metrics["last"][metrics["main_metric"]]


if __name__ == "__main__":
    # torchrun --nproc_per_node=N main_v2.py ...: one run on N processes (utils/distributed.py)
    sys.argv = [sys.argv[0], *prepare_launch(sys.argv[1:])]
    main()
