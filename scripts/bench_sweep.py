"""A sweep of digits runs, sequential with every core per run vs Hydra's joblib launcher with
threads=auto, side by side in one invocation: runs per hour of each and their ratio.

    python scripts/bench_sweep.py [--epochs 20] [--jobs N] [--logdir DIR]
    python scripts/bench_sweep.py --quick          # smoke test: 2 runs of 1 epoch each way

The sweep: SDC on the bundled digits, model.nbit=16,32,64,128 x seed=1,2 (8 runs), the same
overrides every way. "sequential" is the framework before the engine chose its resources: one
job after another, each with torch's default intra-op threads (every core) and the loader
workers of the old num_workers=auto (cores - 1). "sequential, auto" is one job after another
with today's defaults (threads=auto, num_workers=auto: one thread and no loader process for a
head on precomputed features), to show what the launcher itself adds. "joblib" runs ``--jobs``
(default: one per core) jobs side by side with the defaults. Each is timed as a whole
``main_v2.py -m`` command (Python start-up, data, training, evaluation, writing), and the mAP of
every run is compared between them.

Then one run (SDC, digits, 64 bits, seed 1, the same epochs) alone and as a 2-process CPU
torchrun launch (gloo): no speed goal on a CPU, the line shows what the processes cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bench_training import run_in_scratch  # noqa: E402
from utils.resources import available_cores  # noqa: E402


def timed_main_v2(args: list[str], folder: Path, processes: int = 1) -> float:
    """Seconds of one ``main_v2.py <args>`` command (under torchrun when ``processes`` > 1), run
    from ``folder``'s parent; one sentence and exit status 2 when it fails."""
    runner = [sys.executable]
    if processes > 1:
        runner += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), HYDRA_FULL_ERROR="0")
    env.pop("OMP_NUM_THREADS", None)  # every setting chooses its threads itself
    started = time.perf_counter()
    result = subprocess.run(
        [*runner, str(REPO / "main_v2.py"), *args],
        cwd=folder.parent,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"error: the run in {folder} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def final_map(metrics_file: Path) -> float:
    metrics = json.loads(metrics_file.read_text())
    return metrics["last"][metrics["main_metric"]]


def sweep(folder: Path, launcher: list[str], overrides: list[str]) -> tuple[float, dict]:
    """Seconds of one ``main_v2.py -m`` sweep and {run folder name: final mAP}."""
    seconds = timed_main_v2(["-m", *launcher, *overrides, f"hydra.sweep.dir={folder}"], folder)
    return seconds, {
        path.parent.name: final_map(path) for path in sorted(folder.rglob("metrics.json"))
    }


def one_run(folder: Path, overrides: list[str], processes: int) -> tuple[float, float]:
    """Seconds of one ``main_v2.py`` run (under torchrun when ``processes`` > 1) and its mAP."""
    seconds = timed_main_v2([*overrides, f"hydra.run.dir={folder}"], folder, processes)
    return seconds, final_map(folder / "metrics.json")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs of 1 epoch each way")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--jobs",
        type=int,
        default=available_cores(),
        help="parallel jobs of the joblib sweep (default: one per core)",
    )
    parser.add_argument("--logdir", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    grid = ["model.nbit=16,32", "seed=1"] if args.quick else ["model.nbit=16,32,64,128", "seed=1,2"]
    epochs = 1 if args.quick else args.epochs
    overrides = [
        "model=sdc",
        "dataset=digits",
        f"epochs={epochs}",
        "eval_interval=0",
        "progress=false",
        *grid,
    ]
    cores = available_cores()

    def run(folder: Path) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        old_defaults = [f"threads={cores}", f"num_workers={max(0, min(8, cores - 1))}"]
        seq_s, seq_maps = sweep(folder / "sequential", old_defaults, overrides)
        auto_s, auto_maps = sweep(
            folder / "sequential_auto", ["threads=auto", "num_workers=auto"], overrides
        )
        par_s, par_maps = sweep(
            folder / "joblib",
            [
                "hydra/launcher=joblib",
                f"hydra.launcher.n_jobs={args.jobs}",
                "threads=auto",
                "num_workers=auto",
            ],
            overrides,
        )
        runs = len(seq_maps)
        if runs == 0 or not seq_maps.keys() == auto_maps.keys() == par_maps.keys():
            raise SystemExit("error: the sweeps did not finish the same runs")
        diff = max(abs(m[k] - seq_maps[k]) for m in (auto_maps, par_maps) for k in seq_maps)
        out = {
            "runs": runs,
            "cores": cores,
            "jobs": args.jobs,
            "epochs": epochs,
            "sequential_s": seq_s,
            "sequential_auto_s": auto_s,
            "joblib_s": par_s,
            "sequential_runs_per_hour": runs * 3600 / seq_s,
            "sequential_auto_runs_per_hour": runs * 3600 / auto_s,
            "joblib_runs_per_hour": runs * 3600 / par_s,
            "ratio": seq_s / par_s,
            "ratio_to_sequential_auto": auto_s / par_s,
            "max_map_difference": diff,
        }
        print(
            f"sweep: {runs} runs (SDC, digits, {epochs} epochs), {cores} cores, "
            f"load average {os.getloadavg()[0]:.1f} at the end"
        )
        print(
            f"  sequential, {' '.join(old_defaults)} (old defaults) : {seq_s:7.1f} s  "
            f"{out['sequential_runs_per_hour']:7.1f} runs/hour"
        )
        print(
            f"  sequential, threads=auto num_workers=auto          : {auto_s:7.1f} s  "
            f"{out['sequential_auto_runs_per_hour']:7.1f} runs/hour"
        )
        print(
            f"  joblib n_jobs={args.jobs}, threads=auto num_workers=auto    : {par_s:7.1f} s  "
            f"{out['joblib_runs_per_hour']:7.1f} runs/hour"
        )
        print(
            f"  ratio joblib / sequential (old defaults): {out['ratio']:.2f}x (goal 1.8x); "
            f"joblib / sequential auto: {out['ratio_to_sequential_auto']:.2f}x"
        )
        print(
            f"  largest mAP difference to the first: {diff:.2e}"
            " (thread counts change float summation order)"
        )
        single = [o for o in overrides if not o.startswith(("model.nbit=", "seed="))]
        single += ["model.nbit=64", "seed=1", "threads=1"]
        one_s, one_map = one_run(folder / "one_process", single, 1)
        two_s, two_map = one_run(folder / "torchrun_2", single, 2)
        out.update(
            {
                "one_process_s": one_s,
                "torchrun_2_s": two_s,
                "torchrun_map_difference": abs(one_map - two_map),
            }
        )
        print(f"one run, 1 process : {one_s:6.1f} s  mAP {one_map:.4f}")
        print(
            f"one run, torchrun 2 CPU processes (gloo): {two_s:6.1f} s  mAP {two_map:.4f}  "
            f"({two_s / one_s:.2f}x the time: process start-up and the gathers; no goal on CPU)"
        )
        return out

    return run_in_scratch(args.logdir, run)


if __name__ == "__main__":
    main()
