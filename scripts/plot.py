"""Figures of one or several finished runs, the latter compared on shared figures.

    python scripts/plot.py <run> [<run> ...] [--checkpoint best|last] [--out DIR] [--recompute]
                           [--data-dir DIR]

For every run this writes the same figures as ``python val.py logdir=<run> plots=true`` to
``<run>/plots/`` (PR curve, P@k, same/different-class Hamming-distance histograms, training
curves, retrieval grid; utils/figures.py), re-using ``<run>/plots/figure_data_<ckpt>.json``
when it is newer than the checkpoint (``--recompute`` evaluates again). With several runs it
also writes ``compare_*.png`` (one histogram panel per run, PR and P@k curves and training
curves overlaid) to ``--out`` (default: ``<first run>/plots/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.errors import UserError  # noqa: E402


def val_config(run: Path, checkpoint: str, data_dir: str | None):
    """The val.py config for ``run`` with plots on (composed from configs/val.yaml)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import utils.config  # noqa: F401  (resolvers)

    overrides = [f"logdir={run}", f"checkpoint={checkpoint}", "plots=true", "progress=false"]
    if data_dir:
        overrides.append(f"data_dir={data_dir}")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="val", overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def figure_data(run: Path, checkpoint: str, recompute: bool, data_dir: str | None) -> dict:
    """The run's figure data: from plots/figure_data_<ckpt>.json when it is up to date, else
    by evaluating the checkpoint (which writes the run's own figures too)."""
    from utils.compose.experiment import validate

    cached = run / "plots" / f"figure_data_{checkpoint}.json"
    weights = run / "checkpoints" / f"{checkpoint}.pt"
    if (
        not recompute
        and cached.is_file()
        and weights.is_file()
        and cached.stat().st_mtime >= weights.stat().st_mtime
    ):
        print(f"{run}: figure data from {cached}")
        return json.loads(cached.read_text())
    return validate(val_config(run, checkpoint, data_dir))["figures"]


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (with config.yaml)")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument(
        "--out", type=Path, help="folder of the compare_*.png figures (default: <first run>/plots)"
    )
    parser.add_argument(
        "--recompute",
        action="store_true",
        help="evaluate again even when plots/figure_data_<ckpt>.json is current",
    )
    parser.add_argument("--data-dir", help="where the data lives now (val.py data_dir=)")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not (run / "config.yaml").is_file():
            raise UserError(
                f"{run} is not a run directory (no config.yaml): pass the folders "
                "main_v2.py printed"
            )
    datas = [
        figure_data(run.resolve(), args.checkpoint, args.recompute, args.data_dir)
        for run in args.runs
    ]
    files = [Path(f) for d in datas for f in d["files"]]
    if len(datas) > 1:
        from utils.figures import write_comparison_plots

        files += write_comparison_plots(datas, args.out or args.runs[0] / "plots")
    return files


if __name__ == "__main__":
    from utils.errors import exit_on_user_error

    exit_on_user_error(main)()
