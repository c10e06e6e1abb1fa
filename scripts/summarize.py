"""Summarise a sweep: one row per (method, dataset, bits), mean ± std over seeds.

    python scripts/summarize.py logs/multirun/<time> [--checkpoint last|best] [--out table.md]
    python scripts/summarize.py logs/results --pivot [--out table.md]
    python scripts/summarize.py <sweep> --plot      # + <sweep>/plots/map_vs_bits.png

Reads every <run>/metrics.json below the given folders (with its config.yaml) and prints a
markdown table of mAP@R, tie-aware mAP@R and wall time per run. Std is the sample standard
deviation (ddof = 1) over seeds; a single seed shows no std. ``--pivot`` prints one table per
(dataset, backbone, input size): one row per method, ordered by mAP@R at the longest code,
two columns (mAP@R, tie-aware mAP@R) per code length, in percent, and the time of training
plus final evaluation per run (metrics.json train_seconds: without building the data and the
one-time feature extraction).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.checkpoint import write_text  # noqa: E402


def find_runs(roots: list[Path]) -> list[Path]:
    runs = []
    for root in roots:
        if not root.exists():
            raise SystemExit(f"error: {root} does not exist")
        runs.extend(
            p.parent
            for p in sorted(root.rglob("metrics.json"))
            if (p.parent / "config.yaml").is_file()
        )
    return runs


def load_run(run: Path, checkpoint: str) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = OmegaConf.load(run / "config.yaml")
    key = metrics["main_metric"]
    part = metrics.get(checkpoint)
    fallback = part is None  # no evaluation chose a best checkpoint (e.g. select_on=last)
    part = part or metrics["last"]
    r = key.split("@")[1]
    return {
        "method": cfg.model.name,
        "dataset": cfg.dataset.name,
        "nbit": int(cfg.model.nbit),
        "seed": int(cfg.seed),
        "backbone": str(cfg.backbone._target_).rsplit(".", 1)[-1],
        "R": r,
        "map": part[key],
        "map_tie": part.get(f"mAP_tie@{r}"),
        "input": cfg.dataset.get("crop"),
        "fit_seconds": metrics.get("train_seconds"),
        "seconds": metrics.get("wall_seconds", metrics.get("train_seconds")),
        "fallback": fallback,
    }


FALLBACK_MARK = " †"
FALLBACK_NOTE = (
    "† at least one run of this cell has no best checkpoint: its last model is shown instead"
)


def marked(text: str, group: list[dict]) -> str:
    """``text`` with the fallback mark when a run of ``group`` shows last instead of best."""
    return text + FALLBACK_MARK if any(g["fallback"] for g in group) else text


def with_note(text: str, rows: list[dict]) -> str:
    return text + "\n\n" + FALLBACK_NOTE if any(r["fallback"] for r in rows) else text


def mean_std(values: list[float], digits: int = 4, scale: float = 1.0) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["method"], row["nbit"], row["R"])].append(row)
    lines = [
        "| dataset | method | bits | seeds | mAP@R | tie-aware mAP@R | time per run (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (dataset, method, nbit, r), group in sorted(groups.items()):
        seeds = ",".join(str(g["seed"]) for g in sorted(group, key=lambda g: g["seed"]))
        lines.append(
            f"| {dataset} | {method} | {nbit} | {seeds} | "
            f"{marked(mean_std([g['map'] for g in group]), group)} (R={r}) | "
            f"{mean_std([g['map_tie'] for g in group])} | "
            f"{mean_std([g['seconds'] for g in group], 1)} |"
        )
    return "\n".join(lines)


def pivot(rows: list[dict]) -> str:
    """Methods x code lengths, per (dataset, backbone, input size); mAP in percent."""
    settings: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        settings[(row["dataset"], row["backbone"], row["input"], row["R"])].append(row)
    out = []
    for (dataset, backbone, size, r), group in sorted(settings.items(), key=str):
        bits = sorted({g["nbit"] for g in group})
        cells: dict[tuple, list[dict]] = defaultdict(list)
        for g in group:
            cells[(g["method"], g["nbit"])].append(g)
        methods = sorted(
            {g["method"] for g in group},
            key=lambda m: (
                -statistics.mean([g["map"] for g in cells[(m, bits[-1])]])
                if cells[(m, bits[-1])]
                else 0.0
            ),
        )
        out.append(
            f"{dataset}, backbone {backbone}, input {size} px, mAP@{r} and tie-aware "
            f"mAP@{r} in %, mean ± std over seeds (rows ordered by mAP at {bits[-1]} bits)"
        )
        out.append("")
        head = (
            "| method | "
            + " | ".join(f"{b} bits mAP | {b} bits tie-aware" for b in bits)
            + " | seeds | train + eval time per run (s) |"
        )
        out.append(head)
        out.append("|---|" + "---:|---:|" * len(bits) + "---|---:|")
        for method in methods:
            runs = [g for b in bits for g in cells[(method, b)]]
            seeds = sorted({g["seed"] for g in runs})
            line = [method]
            for b in bits:
                cell = cells[(method, b)]
                line += [
                    marked(mean_std([g["map"] for g in cell], 1, 100), cell),
                    mean_std([g["map_tie"] for g in cell], 1, 100),
                ]
            line += [",".join(map(str, seeds)), mean_std([g["fit_seconds"] for g in runs], 0)]
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="sweep or run folders")
    parser.add_argument(
        "--checkpoint",
        choices=["last", "best"],
        default="last",
        help="which model's query metrics to report (default: last)",
    )
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--pivot",
        action="store_true",
        help="methods x code lengths table per setting (for docs/results.md)",
    )
    parser.add_argument(
        "--plot",
        action="store_true",
        help="also write mAP against code length per method (std over seeds "
        "as error bars) to <first folder>/plots/map_vs_bits.png",
    )
    args = parser.parse_args(argv)
    runs = find_runs(args.roots)
    if not runs:
        raise SystemExit(
            f"error: no finished run (metrics.json + config.yaml) under "
            f"{', '.join(map(str, args.roots))}"
        )
    rows = [load_run(run, args.checkpoint) for run in runs]
    text = with_note(pivot(rows) if args.pivot else table(rows), rows)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")
    if args.plot:  # mAP against code length per method (utils/figures.py)
        from utils.figures import write_map_vs_bits

        write_map_vs_bits(rows, args.roots[0] / "plots", args.checkpoint)
    return text


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
