"""Use a trained model's codes: export its database codes to a faiss binary index, search it.

Hashing exists so that a large image collection can be searched by Hamming distance. This
module hands the codes of a run to faiss (https://github.com/facebookresearch/faiss, its
``IndexBinary*`` family) instead of growing an index of its own; the retrieval engine
(:mod:`utils.retrieval`) stays the reference for scores.

Binary codes and packing (the project's one rule, design.md §4): ``b = +1 where u >= 0 else -1``;
``np.packbits(b > 0, axis=1)`` stores bit j of a code in byte ``j // 8`` at position
``7 - j % 8`` (+1 -> 1), the last byte padded with zeros, so ``nbit / 8`` bytes per code
(rounded up). faiss binary indexes need a multiple of 8 bits: they get ``8 * ceil(nbit / 8)``
bits, and the zero padding, equal in every code, adds nothing to a distance. The Hamming
distance of two packed codes (popcount of the XOR) equals the engine's ``(K - <b_q, b_g>) / 2``.

Index types (``index_type``):

- ``flat``: ``faiss.IndexBinaryFlat``, exact. Its ranking is the engine's: (distance, database
  index) ascending. faiss scans the database in index order and keeps, among equal distances,
  the earlier item (its heap compares (distance, id); its counting path, ``use_heap=False``,
  keeps the first items of each distance), so the smaller index wins; the tests check the
  returned ids of both paths against a brute-force (distance, index) ranking, ties included.
- ``ivf``: ``faiss.IndexBinaryIVF`` (k-means over the codes into ``nlist`` lists, a query visits
  the ``nprobe`` nearest lists): approximate, ``nbit / 8`` bytes + an 8-byte id per code.
- ``hnsw``: ``faiss.IndexBinaryHNSW`` (a graph of ``M`` neighbours per node, ``efConstruction``
  at build, ``efSearch`` at query time): approximate, several hundred bytes per code.

Results of every index are returned sorted by (distance, index), so equal-distance results come
in a fixed order whatever the index.

An index folder ``<run>/index/`` (written atomically, replaced whole by a new export):
``codes.npy`` (N, ceil(nbit/8)) uint8 packed codes; ``ids.npy`` (N,) image paths (str) or
database positions (int64); ``labels.npy`` (N,) or (N, C); ``faiss.index``; ``manifest.json``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.checkpoint import (
    replace_folder,
    state_fingerprint,
    write_bytes,
    write_npy,
    write_text,
)
from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_TYPES = ("flat", "ivf", "hnsw")
BINARISATION = (
    "b = +1 where u >= 0 else -1 (an exact 0 is +1); packed with "
    "np.packbits(b > 0, axis=1): bit j of a code is bit 7 - j % 8 of byte j // 8, "
    "+1 -> 1, the last byte padded with 0"
)
FILES = {
    "codes": "codes.npy",
    "ids": "ids.npy",
    "labels": "labels.npy",
    "index": "faiss.index",
    "manifest": "manifest.json",
}
#: Defaults of the approximate indexes (sources in :func:`index_params`).
IVF_NPROBE = 16
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 128


def import_faiss():
    """The faiss module, or one sentence saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "faiss is not installed: pip install faiss-cpu (see requirements.txt)"
        ) from None
    return faiss


# --------------------------------------------------------------------------------------------
# Codes
# --------------------------------------------------------------------------------------------


def pack(codes) -> np.ndarray:
    """Real-valued codes ``(N, nbit)`` -> packed ``(N, ceil(nbit / 8))`` uint8 (see module doc)."""
    from utils.retrieval import pack_codes

    return pack_codes(codes).cpu().numpy()


def faiss_dim(nbit: int) -> int:
    """Bits of the faiss index for ``nbit``-bit codes: a multiple of 8 (zero padding)."""
    return 8 * math.ceil(int(nbit) / 8)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per element of an unsigned integer array (np.bitwise_count from NumPy 2.0; a
    byte table before it, as requirements.txt allows NumPy >= 1.24)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = np.ascontiguousarray(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, x.itemsize).sum(-1, dtype=np.uint8)


def popcount_distances(query_packed: np.ndarray, db_packed: np.ndarray) -> np.ndarray:
    """Brute-force Hamming distances ``(Q, N)`` int32 of packed codes (NumPy XOR + popcount)."""
    x = np.bitwise_xor(query_packed[:, None, :], db_packed[None, :, :])
    return popcount(x).sum(axis=2, dtype=np.int32)


# --------------------------------------------------------------------------------------------
# Index building and searching
# --------------------------------------------------------------------------------------------


def _positive(value, name: str, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def index_params(
    index_type: str, n: int, nlist=None, nprobe=None, M=None, ef_construction=None, ef_search=None
) -> dict[str, Any]:
    """Validated build and search parameters of an index over ``n`` codes, defaults filled in.

    Defaults: ``nlist`` = the power of two nearest to 4 sqrt(n) (faiss wiki, "Guidelines to
    choose an index": 4 sqrt(n) to 16 sqrt(n) lists; 4,096 at 1M codes, 16,384 at 10M), at most
    n // 39 (faiss's k-means warns below 39 training points per list) and at least 1;
    ``nprobe`` = 16 (scripts/bench_search.py, 64-bit clustered codes: k-th-distance recall
    0.9998 at 1M / 4,096 lists and 0.998 at 10M / 16,384 lists, about 20,000-55,000 queries/s
    on 2 cores), at most nlist; ``M`` = 32
    (faiss's IndexBinaryHNSW default), ``efConstruction`` = 40 (faiss's HNSW default),
    ``efSearch`` = 128 (faiss's default is 16; scripts/bench_search.py on 1M clustered 64-bit
    codes measured k-th-distance recall 0.77 / 0.83 / 0.89 / 0.94 at efSearch 16 / 32 / 64 /
    128: on such codes IVF is the better approximate index).
    """
    if index_type not in INDEX_TYPES:
        raise ConfigError(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
    given = {
        "nlist": nlist,
        "nprobe": nprobe,
        "M": M,
        "efConstruction": ef_construction,
        "efSearch": ef_search,
    }
    own = {"flat": (), "ivf": ("nlist", "nprobe"), "hnsw": ("M", "efConstruction", "efSearch")}
    for key, value in given.items():
        if value is not None and key not in own[index_type]:
            raise ConfigError(
                f"{key} applies to index_type="
                f"{'ivf' if key in own['ivf'] else 'hnsw'}, not {index_type}"
            )
        _positive(value, key)
    params: dict[str, Any] = {"index_type": index_type}
    if index_type == "ivf":
        auto = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
        params["nlist"] = int(nlist) if nlist is not None else max(1, min(auto, n // 39))
        if params["nlist"] > n:
            raise ConfigError(
                f"nlist={params['nlist']} is larger than the database ({n} codes): "
                "use nlist <= the number of codes"
            )
        params["nprobe"] = min(int(nprobe or IVF_NPROBE), params["nlist"])
    elif index_type == "hnsw":
        params["M"] = int(M or HNSW_M)
        params["efConstruction"] = int(ef_construction or HNSW_EF_CONSTRUCTION)
        params["efSearch"] = int(ef_search or HNSW_EF_SEARCH)
    return params


def build_index(
    packed: np.ndarray, nbit: int, params: dict[str, Any], train_per_list: int | None = None
):
    """A faiss binary index over ``packed`` ``(N, ceil(nbit/8))`` uint8 codes (ids = row order).

    ``train_per_list``: IVF k-means sample, in codes per list (None = faiss's default, 256).
    """
    faiss = import_faiss()
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    d = faiss_dim(nbit)
    if packed.ndim != 2 or packed.shape[1] * 8 != d:
        raise ValueError(
            f"packed codes must be (N, {d // 8}) uint8 for nbit={nbit}, got {packed.shape}"
        )
    kind = params["index_type"]
    if kind == "flat":
        index = faiss.IndexBinaryFlat(d)
    elif kind == "ivf":
        index = faiss.index_binary_factory(d, f"BIVF{params['nlist']}")
        if train_per_list is not None:
            index.cp.max_points_per_centroid = int(train_per_list)
        index.train(packed)
    else:
        index = faiss.IndexBinaryHNSW(d, params["M"])
        index.hnsw.efConstruction = params["efConstruction"]
    index.add(packed)
    set_search_params(index, params)
    return index


def set_search_params(index, params: dict[str, Any]) -> None:
    """Apply ``nprobe`` (ivf) / ``efSearch`` (hnsw) to ``index``."""
    if params["index_type"] == "ivf":
        index.nprobe = int(params["nprobe"])
    elif params["index_type"] == "hnsw":
        index.hnsw.efSearch = int(params["efSearch"])


def search_index(index, query_packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each query, sorted by (distance, database index).

    Args:
        index: a faiss binary index; query_packed: ``(Q, d/8)`` uint8; k: results per query.
    Returns:
        ``(Q, k)`` int32 distances and ``(Q, k)`` int64 database indices. An approximate index
        may find fewer than k items for a query: those slots hold index -1 and distance
        ``np.iinfo(int32).max``, sorted last.
    """
    D, I = index.search(np.ascontiguousarray(query_packed, dtype=np.uint8), int(k))
    D = np.where(I < 0, np.iinfo(np.int32).max, D).astype(np.int32)
    order = np.lexsort((np.where(I < 0, np.iinfo(np.int64).max, I), D), axis=1)
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1).astype(np.int64)


def index_bytes(index) -> int:
    """Size of the serialised index (codes, ids, lists or graph) in bytes."""
    faiss = import_faiss()
    return int(faiss.serialize_index_binary(index).nbytes)


# --------------------------------------------------------------------------------------------
# Index folder: write (atomically) and read
# --------------------------------------------------------------------------------------------


def model_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (20 hex digits) of a checkpoint's model tensors: names, shapes, dtypes, values."""
    return state_fingerprint(dict(sorted(state.items())))[:20]


def write_index_dir(
    target: Path,
    packed: np.ndarray,
    ids: np.ndarray,
    labels: np.ndarray,
    index,
    manifest: dict[str, Any],
) -> Path:
    """Write the index folder ``target`` whole: into a temporary sibling, then swapped in.

    A killed export leaves the previous folder (or none) and a hidden ``.index.tmp*`` sibling,
    removed by the next export; never a half-written ``target``.
    """
    faiss = import_faiss()
    target = Path(target)
    parent = target.parent
    for stale in [*parent.glob(f".{target.name}.tmp*"), *parent.glob(f".{target.name}.old*")]:
        if not _alive(stale.name[len(target.name) + 5 :]):  # not a running export's folder
            shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f".{target.name}.tmp{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        # every file fsynced by the writers before the rename makes the folder visible
        write_npy(tmp / FILES["codes"], packed)
        write_npy(tmp / FILES["ids"], ids)
        write_npy(tmp / FILES["labels"], labels)
        write_bytes(tmp / FILES["index"], faiss.serialize_index_binary(index).tobytes())
        write_text(tmp / FILES["manifest"], json.dumps(manifest, indent=1))
        replace_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _alive(pid: str) -> bool:
    """Whether the process ``pid`` (a string; anything else counts as dead) is running."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class CodeIndex:
    """A loaded index folder."""

    path: Path
    manifest: dict[str, Any]
    index: Any  # faiss IndexBinary*
    codes: np.ndarray  # (N, ceil(nbit/8)) uint8
    ids: np.ndarray  # (N,) str paths or int64 positions
    labels: np.ndarray  # (N,) or (N, C)

    @property
    def nbit(self) -> int:
        return int(self.manifest["nbit"])

    def __len__(self) -> int:
        return len(self.codes)


def load_index_dir(path: str | os.PathLike) -> CodeIndex:
    """Read an index folder written by :func:`write_index_dir`, with one sentence per problem."""
    faiss = import_faiss()
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"Index folder {path} does not exist: export one with "
            "python scripts/export.py logdir=<run dir>"
        )
    missing = [name for name in FILES.values() if not (path / name).is_file()]
    if missing:
        raise DataError(
            f"Index folder {path} lacks {', '.join(missing)}: it is not an index "
            "written by scripts/export.py, or it is damaged; export it again"
        )
    try:
        manifest = json.loads((path / FILES["manifest"]).read_text())
        nbit = int(manifest["nbit"])
        manifest["index_type"] = str(manifest["params"]["index_type"])
        codes = np.load(path / FILES["codes"], allow_pickle=False)
        ids = np.load(path / FILES["ids"], allow_pickle=False)
        labels = np.load(path / FILES["labels"], allow_pickle=False)
        index = faiss.read_index_binary(str(path / FILES["index"]))
    except Exception as error:  # noqa: BLE001 - any damage ends in one sentence
        raise DataError(
            f"Index folder {path} is damaged ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}): export it again"
        ) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"Index folder {path} has format version "
            f"{manifest.get('format_version')!r}, this code reads {FORMAT_VERSION}: "
            "export it again"
        )
    n = len(codes)
    if (
        codes.dtype != np.uint8
        or codes.shape != (n, faiss_dim(nbit) // 8)
        or len(ids) != n
        or len(labels) != n
        or index.ntotal != n
        or index.d != faiss_dim(nbit)
    ):
        raise DataError(
            f"Index folder {path} is inconsistent (codes {codes.shape}, ids "
            f"{len(ids)}, labels {len(labels)}, faiss index {index.ntotal} x "
            f"{index.d} bits, manifest nbit {nbit}): export it again"
        )
    set_search_params(index, manifest["params"])
    return CodeIndex(path=path, manifest=manifest, index=index, codes=codes, ids=ids, labels=labels)


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def check_k(k, n: int) -> int:
    """``k`` as an int in 1..n, or one sentence."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got k={k}")
    if k > n:
        raise ConfigError(f"k={k} is larger than the database ({n} codes): use k <= {n}")
    return int(k)


__all__ = [
    "BINARISATION",
    "CodeIndex",
    "FORMAT_VERSION",
    "INDEX_TYPES",
    "build_index",
    "check_k",
    "faiss_dim",
    "import_faiss",
    "index_bytes",
    "index_params",
    "load_index_dir",
    "model_fingerprint",
    "now_utc",
    "pack",
    "popcount",
    "popcount_distances",
    "search_index",
    "set_search_params",
    "write_index_dir",
]
