"""Benchmark of the retrieval metrics engine (utils/retrieval/).

    python scripts/bench_retrieval.py            # the four measurements of issue 2
    python scripts/bench_retrieval.py --quick    # every case shrunk (smoke test)

1. CIFAR-10 scale: 1,000 queries x 59,000 db x 64 bits, 10 classes, R=1000: our time, the
   straightforward baseline (±1 float matmul for all distances, then a full stable argsort of the
   database per query, then AP from the ranking), their ratio and both mAPs.
2. NUS-WIDE scale, multi-label: 2,100 x 193,000 x 64 bits, 21 labels, R=5000.
3. 1,000 x 1,000,000 x 64 bits, R=1000: time and peak resident memory (in a child process, so
   that its peak is its own).
4. nbit 16, 32, 64, 128 and 24 at CIFAR scale: time and mAP.

Codes are realistic: every class has a random ±1 prototype; an item's code is its prototype
(multi-label: the sign of the sum of its labels' prototypes, zeros broken at random) with every
bit flipped with probability ``flip``. Times are the best of ``--repeats`` runs, because the
machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from utils.retrieval import mean_average_precision, retrieval_report  # noqa: E402

GOAL_SPEEDUP = 30.0
GOAL_NUS_S = 3.0
GOAL_PEAK_GB = 2.0


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def single_label_data(n_q, n_db, nbit, n_cls, flip=0.3, seed=0):
    """Codes (float32 ±1) correlated with 1-D class labels."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 2, (n_cls, nbit), generator=g).float() * 2 - 1

    def make(n):
        labels = torch.randint(0, n_cls, (n,), generator=g)
        codes = torch.empty((n, nbit), dtype=torch.float32)
        for s in range(0, n, 65536):  # bounded temporary memory
            c = protos[labels[s : s + 65536]]
            flips = torch.rand(c.shape, generator=g) < flip
            codes[s : s + 65536] = torch.where(flips, -c, c)
        return codes, labels

    q, ql = make(n_q)
    d, dl = make(n_db)
    return q, d, ql, dl


def multi_label_data(n_q, n_db, nbit, n_lab, flip=0.3, seed=0):
    """Codes correlated with multi-hot labels (1 to 3 labels per item)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 2, (n_lab, nbit), generator=g).float() * 2 - 1

    def make(n):
        labels = torch.zeros((n, n_lab), dtype=torch.float32)
        count = torch.randint(1, 4, (n,), generator=g)
        for j in range(3):
            pick = torch.randint(0, n_lab, (n,), generator=g)
            rows = torch.nonzero(count > j).squeeze(1)
            labels[rows, pick[rows]] = 1.0
        codes = torch.empty((n, nbit), dtype=torch.float32)
        for s in range(0, n, 65536):
            u = labels[s : s + 65536] @ protos
            u = u + (torch.rand(u.shape, generator=g) - 0.5)  # random tie-break at 0
            c = torch.where(u >= 0, 1.0, -1.0)
            flips = torch.rand(c.shape, generator=g) < flip
            codes[s : s + 65536] = torch.where(flips, -c, c)
        return codes, labels

    q, ql = make(n_q)
    d, dl = make(n_db)
    return q, d, ql, dl


# --------------------------------------------------------------------------------------------
# The straightforward baseline (kept here on purpose; not used by the library)
# --------------------------------------------------------------------------------------------


def baseline_map(q, d, ql, dl, R, chunk=100):
    """mAP@R as the field's reference computes it: all distances by a ±1 float matmul, then a
    full sort of the database per query (stable, so ties go by database index), then AP."""
    qb = torch.where(q >= 0, 1.0, -1.0)
    db = torch.where(d >= 0, 1.0, -1.0)
    nbit = qb.shape[1]
    aps = []
    for s in range(0, qb.shape[0], chunk):
        dist = 0.5 * (nbit - qb[s : s + chunk] @ db.T)
        order = torch.argsort(dist, dim=1, stable=True)[:, :R]
        if ql.ndim == 1:
            rel = (dl[order] == ql[s : s + chunk, None]).double()
        else:
            rel = ((dl[order] * ql[s : s + chunk, None, :]).sum(-1) > 0).double()
        L = rel.cumsum(1)
        ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
        num = (rel * L / ranks).sum(1)
        aps.append(torch.where(L[:, -1] > 0, num / L[:, -1].clamp(min=1), 0.0))
    return float(torch.cat(aps).mean())


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------


def best_of(fn, repeats):
    """(best wall time, the CPU time of that run, value). On a shared machine the CPU time of a
    single-threaded run approximates the wall time on a dedicated core."""
    best, cpu, value = float("inf"), float("inf"), None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        value = fn()
        t, c = time.perf_counter() - t0, time.process_time() - c0
        if t < best:
            best, cpu = t, c
    return best, cpu, value


def _t(wall, cpu):
    return f"{wall:8.3f} s (cpu {cpu:7.3f} s)"


def peak_rss_gb():
    """Peak resident memory of this process in GiB.

    ``VmHWM`` (Linux) belongs to the current address space; ``ru_maxrss`` would also carry the
    peak of the parent process across fork + exec, so it is only the fallback.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _load():
    """The machine's load average: on a shared machine, timings are only as good as this."""
    try:
        one, five, _ = os.getloadavg()
        return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"
    except OSError:  # pragma: no cover - not available on this platform
        return "load average unknown"


def _line(text):
    print(text, flush=True)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def case_cifar(args, sizes):
    n_q, n_db = sizes["cifar"]
    _line(f"[1] CIFAR-10 scale: {n_q} queries x {n_db} db x 64 bits, 10 classes, R=1000")
    q, d, ql, dl = single_label_data(n_q, n_db, 64, 10)
    # Warm-up: the first call of the process loads the numba kernels from their on-disk cache
    # (or compiles them, a few seconds, when the cache is cold); reported, not in the timings.
    c0, t0 = time.process_time(), time.perf_counter()
    mean_average_precision(q[:10], d[:1000], ql[:10], dl[:1000], R=1000)
    t_first, c_first = time.perf_counter() - t0, time.process_time() - c0
    _line(f"    first call (kernel load/compile) : {_t(t_first, c_first)}   (excluded below)")
    t_ours, c_ours, m_ours = best_of(
        lambda: mean_average_precision(q, d, ql, dl, R=1000), args.repeats
    )
    t_base, c_base, m_base = best_of(
        lambda: baseline_map(q, d, ql, dl, 1000), args.baseline_repeats
    )
    t_rep, c_rep, rep = best_of(lambda: retrieval_report(q, d, ql, dl, R=1000), args.repeats)
    ratio = t_base / t_ours
    _line(f"    ours      mean_average_precision : {_t(t_ours, c_ours)}   mAP@1000 = {m_ours:.10f}")
    _line(f"    baseline  matmul + full argsort  : {_t(t_base, c_base)}   mAP@1000 = {m_base:.10f}")
    _line(
        f"    speed-up (wall)                  : {ratio:8.1f} x   (cpu time: "
        f"{c_base / max(c_ours, 1e-9):.1f} x; goal >= {GOAL_SPEEDUP:.0f} x: "
        f"{'met' if ratio >= GOAL_SPEEDUP else 'NOT met'})"
    )
    agree = abs(m_ours - m_base) < 1e-9
    _line(
        f"    mAPs agree                       : {'yes' if agree else 'NO'} "
        f"(|diff| = {abs(m_ours - m_base):.1e})"
    )
    _line(
        f"    ours      retrieval_report (all) : {_t(t_rep, c_rep)}   mAP_tie@1000 = "
        f"{rep['mAP_tie@1000']:.10f}  P@10 = {rep['P@10']:.4f}"
    )
    return dict(
        t_ours=t_ours,
        t_base=t_base,
        ratio=ratio,
        map_ours=m_ours,
        map_base=m_base,
        agree=agree,
        t_report=t_rep,
        cpu_ours=c_ours,
        cpu_base=c_base,
        t_first=t_first,
    )


def case_nus(args, sizes):
    n_q, n_db = sizes["nus"]
    _line(f"[2] NUS-WIDE scale, multi-label: {n_q} x {n_db} x 64 bits, 21 labels, R=5000")
    q, d, ql, dl = multi_label_data(n_q, n_db, 64, 21)
    t, c, m = best_of(lambda: mean_average_precision(q, d, ql, dl, R=5000), args.repeats)
    t_rep, c_rep, rep = best_of(
        lambda: retrieval_report(q, d, ql, dl, R=5000), max(1, args.repeats - 1)
    )
    _line(
        f"    ours      mean_average_precision : {_t(t, c)}   mAP@5000 = {m:.10f}   "
        f"(goal < {GOAL_NUS_S:.0f} s: {'met' if t < GOAL_NUS_S else 'NOT met'})"
    )
    _line(
        f"    ours      retrieval_report (all) : {_t(t_rep, c_rep)}   mAP_tie@5000 = "
        f"{rep['mAP_tie@5000']:.10f}"
    )
    return dict(t=t, cpu=c, map=m, t_report=t_rep)


def _million_child(n_q, n_db, repeats):
    """Runs in a child process; prints one JSON line."""
    q, d, ql, dl = single_label_data(n_q, n_db, 64, 10)
    rss_data = peak_rss_gb()
    t, c, m = best_of(lambda: mean_average_precision(q, d, ql, dl, R=1000), repeats)
    print(
        json.dumps(dict(t=t, cpu=c, map=m, rss_data=rss_data, rss_peak=peak_rss_gb())), flush=True
    )


def case_million(args, sizes):
    n_q, n_db = sizes["million"]
    _line(f"[3] large database: {n_q} x {n_db} x 64 bits, 10 classes, R=1000 (child process)")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child-million",
        str(n_q),
        str(n_db),
        "--repeats",
        str(max(1, args.repeats - 1)),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    ok = res["rss_peak"] < GOAL_PEAK_GB
    _line(
        f"    ours      mean_average_precision : {_t(res['t'], res['cpu'])}   "
        f"mAP@1000 = {res['map']:.10f}"
    )
    _line(
        f"    peak RSS of the process          : {res['rss_peak']:8.3f} GB  "
        f"(after generating the data: {res['rss_data']:.3f} GB; goal < {GOAL_PEAK_GB:.0f} GB: "
        f"{'met' if ok else 'NOT met'})"
    )
    return res


def case_bits(args, sizes):
    n_q, n_db = sizes["cifar"]
    _line(f"[4] code lengths at CIFAR scale ({n_q} x {n_db}, 10 classes, R=1000)")
    res = {}
    for nbit in (16, 32, 64, 128, 24):
        q, d, ql, dl = single_label_data(n_q, n_db, nbit, 10, seed=nbit)
        t, c, m = best_of(
            lambda q=q, d=d, ql=ql, dl=dl: mean_average_precision(q, d, ql, dl, R=1000),
            args.repeats,
        )
        mt = mean_average_precision(q, d, ql, dl, R=1000, ties="average")
        _line(
            f"    nbit {nbit:3d}: {_t(t, c)}   mAP@1000 = {m:.6f}   tie-aware mAP@1000 = {mt:.6f}"
        )
        res[nbit] = dict(t=t, cpu=c, map=m, map_tie=mt)
    return res


def _backend_name():
    import numba

    return f"numba {numba.__version__} kernels (threads = torch.get_num_threads(); baseline: torch)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shrink every case (smoke test)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (best kept)")
    parser.add_argument("--baseline-repeats", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for this benchmark (default: unchanged)",
    )
    parser.add_argument("--child-million", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_million:
        _million_child(*args.child_million, args.repeats)
        return None
    if args.quick:
        sizes = dict(cifar=(50, 3000), nus=(60, 5000), million=(20, 20000))
        args.repeats, args.baseline_repeats = 1, 1
    else:
        sizes = dict(cifar=(1000, 59000), nus=(2100, 193000), million=(1000, 1000000))
    _line(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs{' (quick mode)' if args.quick else ''}; {_load()}"
    )
    _line(f"engine backend on the CPU: {_backend_name()}")
    results = dict(
        cifar=case_cifar(args, sizes),
        nus=case_nus(args, sizes),
        million=case_million(args, sizes),
        bits=case_bits(args, sizes),
    )
    _line(f"done; {_load()}")
    return results


if __name__ == "__main__":
    main()
