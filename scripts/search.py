"""Search an exported index by image (or by codes): the top-k database items and their distances.

    python scripts/search.py index=<run>/index query=<image | folder | codes.npz> [k=10]
        [nprobe=N | efSearch=N] [logdir=<run>] [device=auto] [--json] [--grid out.png]

Query images go through the run's eval transform, backbone and head (utils/compose/search.py).
A codes .npz holds 'codes' (Q, nbit) real-valued (val.py's 'query_codes' works too) or 'packed'
(Q, nbit/8) uint8. Results are sorted by (Hamming distance, database index). A folder with
unreadable files searches the readable ones and lists the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

# On a shared CPU, OpenMP threads that spin while they wait steal each other's cores (see
# scripts/bench_search.py); must be set before faiss or torch start their thread pools.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import utils.config  # noqa: E402,F401  (registers the safe resolvers used by run configs)
from utils.compose.search import parse_settings, save_grid, search_run  # noqa: E402
from utils.errors import exit_on_user_error  # noqa: E402

SETTINGS = {  # key: (type, default); ... = required
    "index": (str, ...),
    "query": (str, ...),
    "k": (int, 10),
    "nprobe": (int, None),
    "efSearch": (int, None),
    "logdir": (str, None),
    "device": (str, "auto"),
    "batch_size": (int, 64),
}


def print_text(result: dict) -> None:
    for entry in result["queries"]:
        print(f"{entry['query']}:")
        for hit in entry["results"]:
            print(f"  {hit['rank']:>3}  d={hit['distance']:<3} {hit['id']}  (label {hit['label']})")
    if result["bad"]:
        print(f"skipped {len(result['bad'])} unreadable file(s):")
        for bad in result["bad"]:
            print(f"  {bad['path']}: {bad['error']}")


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*", help="key=value: " + ", ".join(SETTINGS))
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--grid", default=None, help="also draw the results into this PNG")
    args = parser.parse_args(argv)
    s = parse_settings(args.settings, SETTINGS)
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s", stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its "Loading faiss" lines
    result = search_run(
        s["index"],
        s["query"],
        k=s["k"],
        logdir=s["logdir"],
        nprobe=s["nprobe"],
        ef_search=s["efSearch"],
        device=s["device"],
        batch_size=s["batch_size"],
    )
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_text(result)
    if args.grid:
        out = save_grid(result, args.grid, logdir=s["logdir"])
        print(f"grid written to {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
