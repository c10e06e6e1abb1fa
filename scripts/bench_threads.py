"""threads=auto against fixed thread counts, on a quiet machine and beside busy processes.

    python scripts/bench_threads.py [--epochs 20] [--busy 1 2] [--repeats 1]
    python scripts/bench_threads.py --quick        # smoke test: 2 epochs, one busy process

SDC on the bundled digits (a head on precomputed features, the work a sweep repeats hundreds
of times), timed by main_v2.py's own ``time:`` line (training plus final evaluation), with
threads=1 .. all cores and threads=auto, first on the machine as it is, then beside N busy
processes (each a torch matrix-product loop on every core, like a neighbour's training job).
"Today's default" before threads=auto was torch's own: every core. The best of ``--repeats``
runs is kept per setting.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.resources import available_cores  # noqa: E402

BUSY = "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"


def timed_run(threads: str, epochs: int, folder: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("OMP_NUM_THREADS", None)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "main_v2.py"),
            f"threads={threads}",
            f"epochs={epochs}",
            "eval_interval=0",
            "progress=false",
            f"data_dir={folder / 'data'}",
            f"hydra.run.dir={folder / f'run_{threads}_{os.urandom(3).hex()}'}",
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    match = re.search(r"^time: ([\d.]+) s", result.stdout, re.M)
    if result.returncode != 0 or not match:
        raise SystemExit(f"error: threads={threads} failed:\n{result.stderr[-2000:]}")
    return float(match.group(1))


def measure(settings: list[str], epochs: int, repeats: int, folder: Path) -> dict[str, float]:
    return {s: min(timed_run(s, epochs, folder) for _ in range(repeats)) for s in settings}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--busy",
        type=int,
        nargs="*",
        default=[1, 2],
        help="numbers of busy processes to run beside (default: 1 2)",
    )
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.busy = 2, [1]
    cores = available_cores()
    fixed = [str(n) for n in range(1, cores + 1)]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        quiet = measure([*fixed, "auto"], args.epochs, args.repeats, folder)
        best = min(quiet[s] for s in fixed)
        print(f"SDC on digits, {args.epochs} epochs, {cores} cores, seconds (train + eval)")
        print(
            "  quiet: "
            + ", ".join(f"threads={s} {t:.1f}" for s, t in quiet.items())
            + f"   auto / best fixed = {quiet['auto'] / best:.2f}"
        )
        results["quiet"] = quiet
        for n in args.busy:
            env = dict(os.environ, OMP_NUM_THREADS=str(cores))
            busy = [subprocess.Popen([sys.executable, "-c", BUSY], env=env) for _ in range(n)]
            try:
                loaded = measure([str(cores), "auto"], args.epochs, args.repeats, folder)
            finally:
                for process in busy:
                    process.kill()
                    process.wait()
            print(
                f"  beside {n} busy process(es): threads={cores} (old default) "
                f"{loaded[str(cores)]:.1f}, auto {loaded['auto']:.1f}   "
                f"speed-up {loaded[str(cores)] / loaded['auto']:.1f}x"
            )
            results[f"busy{n}"] = loaded
    return results


if __name__ == "__main__":
    main()
