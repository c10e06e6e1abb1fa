"""Export a trained run's database codes to a faiss index folder, ``<run>/index/``.

    python scripts/export.py logdir=<run dir> [checkpoint=best|last] [index_type=flat|ivf|hnsw]
        [nlist=N nprobe=N] [M=N efConstruction=N efSearch=N] [data_dir=...] [device=auto]

Writes packed codes, item ids (image paths, or database positions), labels, manifest.json and a
faiss binary index (utils/code_index.py); re-running replaces the folder whole. Search it with
scripts/search.py.
"""

from __future__ import annotations

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
from utils.compose.search import export_run, parse_settings  # noqa: E402
from utils.errors import exit_on_user_error  # noqa: E402

SETTINGS = {  # key: (type, default); ... = required. Index defaults: utils.code_index.index_params
    "logdir": (str, ...),
    "checkpoint": (str, "best"),
    "index_type": (str, "flat"),
    "nlist": (int, None),
    "nprobe": (int, None),
    "M": (int, None),
    "efConstruction": (int, None),
    "efSearch": (int, None),
    "data_dir": (str, None),
    "device": (str, "auto"),
    "batch_size": (int, None),
    "progress": (bool, True),
}


@exit_on_user_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return None
    s = parse_settings(argv, SETTINGS)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its "Loading faiss" lines
    target = export_run(
        s["logdir"],
        checkpoint=s["checkpoint"],
        index_type=s["index_type"],
        nlist=s["nlist"],
        nprobe=s["nprobe"],
        M=s["M"],
        ef_construction=s["efConstruction"],
        ef_search=s["efSearch"],
        data_dir=s["data_dir"],
        device=s["device"],
        batch_size=s["batch_size"],
        progress=s["progress"],
    )
    print(f"index written to {target}")
    return target


if __name__ == "__main__":
    main()
