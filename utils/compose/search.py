"""Export a run's database codes to an index folder, and search it by image or by codes.

``scripts/export.py`` and ``scripts/search.py`` are thin wrappers of :func:`export_run` and
:func:`search_run`; :mod:`utils.code_index` holds the packing, the faiss indexes and the folder
format (its docstring states the binarisation rule and how ties are ordered).

Export rebuilds the run as ``val.py`` does (``build_trainer`` + ``load_checkpoint`` +
``load_model_state``) and encodes the database split with the trainer, i.e. from the feature
cache when the run trained from it: the exported codes are the codes ``val.py`` scores.

Search encodes query images with the run's *own* backbone and head and its eval transform
(``build_eval_transform``): it builds the model with ``build.build_model`` (what ``build_trainer``
builds before the feature cache swaps the backbone for an identity), so a run trained from
cached features is searched with its real backbone. It does not build the dataset (deliberate
deviation from ``build_trainer``, which would): a search must work where only the run folder and
its index are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf, open_dict
from PIL import Image

from utils import resources
from utils.code_index import (
    BINARISATION,
    FORMAT_VERSION,
    INDEX_TYPES,
    CodeIndex,
    build_index,
    check_k,
    faiss_dim,
    import_faiss,
    index_params,
    load_index_dir,
    model_fingerprint,
    now_utc,
    pack,
    search_index,
    set_search_params,
    write_index_dir,
)
from utils.compose import build
from utils.compose.experiment import run_checkpoint
from utils.config import load_run_config
from utils.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)

#: PIL errors of an unreadable or non-image file.
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# --------------------------------------------------------------------------------------------
# key=value command lines (as val.py's Hydra overrides, with a fixed list of keys)
# --------------------------------------------------------------------------------------------


def parse_settings(args: Sequence[str], spec: dict[str, tuple[type, Any]]) -> dict[str, Any]:
    """``["k=5", "index=dir"]`` -> ``{"k": 5, "index": "dir", ...defaults}``.

    ``spec``: key -> (type, default); a default of ``...`` marks a required key. ``null`` /
    ``none`` give None. Unknown keys, malformed values and missing keys are one ConfigError.
    """
    values: dict[str, Any] = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r} is not key=value; valid keys: {', '.join(spec)}")
        key, text = arg.split("=", 1)
        if key not in spec:
            raise ConfigError(f"unknown setting {key!r}; valid keys: {', '.join(spec)}")
        kind = spec[key][0]
        if text.strip().lower() in ("null", "none", ""):
            values[key] = None
        elif kind is int:
            try:
                values[key] = int(text)
            except ValueError:
                raise ConfigError(f"{key} must be an integer, got {text!r}") from None
        elif kind is bool:
            if text.lower() not in ("true", "false"):
                raise ConfigError(f"{key} must be true or false, got {text!r}")
            values[key] = text.lower() == "true"
        else:
            values[key] = text
    for key, (_, default) in spec.items():
        if key not in values:
            if default is ...:
                raise ConfigError(f"missing setting {key}=...")
            values[key] = default
        elif values[key] is None and default is ...:
            raise ConfigError(f"setting {key} needs a value")
    return values


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def _run_config(logdir: Path, device: str, progress: bool, data_dir=None, batch_size=None):
    """The run's saved config, adjusted as val.py adjusts it (the run may have moved)."""
    from utils.compose.experiment import _replace_prefix  # val.py's data_dir move, reused as is

    cfg = load_run_config(logdir)
    with open_dict(cfg):
        cfg.logdir = str(logdir.resolve())
        cfg.progress = bool(progress)
        cfg.device = device
        if data_dir is not None:
            old = str(cfg.data_dir)
            cfg.data_dir = str(data_dir)
            cfg.dataset.source = OmegaConf.create(
                _replace_prefix(OmegaConf.to_container(cfg.dataset.source), old, cfg.data_dir)
            )
        if batch_size is not None:
            cfg.eval_batch_size = int(batch_size)
    return cfg


def item_ids(split) -> tuple[np.ndarray, str]:
    """Ids of a split's items: image paths where it has them, else positions in the split."""
    from datasets.base import FileImageSplit

    if isinstance(split, FileImageSplit):
        return np.asarray([str(p) for p in split.paths]), "path"
    return np.arange(len(split), dtype=np.int64), "index"


def image_mode(split) -> str | None:
    """The PIL mode of the split's images ('RGB', 'L'), or None for a feature dataset."""
    from datasets.base import is_feature_split

    if len(split) == 0 or is_feature_split(split):
        return None
    item = split.load(0)
    return item.mode if isinstance(item, Image.Image) else None


def export_run(
    logdir,
    checkpoint: str = "best",
    index_type: str = "flat",
    nlist=None,
    nprobe=None,
    M=None,
    ef_construction=None,
    ef_search=None,
    data_dir=None,
    device: str = "auto",
    batch_size=None,
    progress: bool = True,
) -> Path:
    """Write ``<logdir>/index/`` for the run's database (see :mod:`utils.code_index`).

    Returns the index folder. Re-running replaces it whole (atomically).
    """
    import_faiss()  # fail before encoding anything
    if index_type not in INDEX_TYPES:
        raise ConfigError(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
    logdir = Path(logdir)
    cfg = _run_config(logdir, device, progress, data_dir, batch_size)
    _, state = run_checkpoint(logdir, str(checkpoint))
    from models.trainers.base import load_model_state
    from utils.compose.experiment import build_trainer

    trainer = build_trainer(cfg, logdir)
    load_model_state(trainer.model, state["model"])
    database = trainer.data.database
    params = index_params(
        index_type,
        len(database),
        nlist=nlist,
        nprobe=nprobe,
        M=M,
        ef_construction=ef_construction,
        ef_search=ef_search,
    )
    codes = trainer.encode(database, "encode database")  # (N, nbit) continuous
    nbit = int(codes.shape[1])
    packed = pack(codes)
    from datasets.feature_cache import CachedSplit

    raw = build.build_data(cfg).database if isinstance(database, CachedSplit) else database
    if len(raw) != len(database) or not np.array_equal(raw.labels, database.labels):
        raise DataError(
            f"the dataset under {cfg.data_dir} no longer matches the run's cached "
            "database split: pass data_dir=<the run's data folder>"
        )
    ids, id_kind = item_ids(raw)
    index = build_index(packed, nbit, params)
    manifest = {
        "format_version": FORMAT_VERSION,
        "nbit": nbit,
        "bytes_per_code": int(packed.shape[1]),
        "faiss_bits": faiss_dim(nbit),
        "count": int(len(packed)),
        "binarisation": BINARISATION,
        "model": str(cfg.model.name),
        "backbone": str(cfg.backbone._target_),
        "model_fingerprint": model_fingerprint(state["model"]),
        "checkpoint": str(checkpoint),
        "checkpoint_epoch": int(state.get("epoch", -1)),
        "dataset": str(cfg.dataset.name),
        "split": "database",
        "id_kind": id_kind,
        "image_mode": image_mode(raw),
        "multilabel": bool(np.asarray(database.labels).ndim == 2),
        "params": params,
        "faiss_version": str(import_faiss().__version__),
        "run": str(logdir.resolve()),
        "date": now_utc(),
    }
    target = write_index_dir(
        logdir / "index", packed, ids, np.asarray(database.labels), index, manifest
    )
    log.info("index of %d codes (%d bits, %s) written to %s", len(packed), nbit, index_type, target)
    return target


# --------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------


@dataclass
class RunEncoder:
    """The run's backbone + head and eval transform, for query images."""

    model: torch.nn.Module
    transform: Any
    device: torch.device
    image_mode: str
    batch_size: int


def load_encoder(
    run_dir: Path, manifest: dict[str, Any], device: str = "auto", batch_size: int = 64
) -> RunEncoder:
    """The model that wrote the index, rebuilt from ``run_dir`` (checked against the manifest)."""
    from models.trainers.base import load_model_state

    cfg = load_run_config(run_dir)
    if int(cfg.model.nbit) != int(manifest["nbit"]) or str(cfg.model.name) != manifest["model"]:
        raise CheckpointError(
            f"The index was built for {manifest['model']} with "
            f"{manifest['nbit']} bits but the run {run_dir} is "
            f"{cfg.model.name} with {cfg.model.nbit} bits: pass that run's own "
            "index, or export one with python scripts/export.py logdir=<run>"
        )
    _, state = run_checkpoint(run_dir, str(manifest["checkpoint"]))
    if model_fingerprint(state["model"]) != manifest["model_fingerprint"]:
        raise CheckpointError(
            f"The index was exported from other weights than "
            f"{run_dir}/checkpoints/{manifest['checkpoint']}.pt (retrained or "
            f"another run): export it again with python scripts/export.py "
            f"logdir={run_dir} checkpoint={manifest['checkpoint']}"
        )
    if not manifest.get("image_mode"):
        raise DataError(
            f"The run {run_dir} was trained on precomputed features, not images: "
            "query it with codes (query=codes.npz)"
        )
    device_t = resources.resolve_device(device)
    model = build.build_model(cfg)  # the real backbone, whatever the feature cache did
    load_model_state(model, state["model"])
    model.to(device_t).eval()
    return RunEncoder(
        model=model,
        transform=build.build_eval_transform(cfg),
        device=device_t,
        image_mode=str(manifest["image_mode"]),
        batch_size=int(batch_size),
    )


def read_image(path: Path, mode: str) -> Image.Image:
    """The image at ``path`` converted to ``mode``; a DataError when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except _IMAGE_ERRORS as error:
        raise DataError(f"cannot read {path} as an image ({type(error).__name__})") from None


@torch.no_grad()
def encode_images(encoder: RunEncoder, paths: Sequence[Path]):
    """Codes of the readable images among ``paths``.

    Returns:
        ``(codes (M, nbit) float32 CPU, good paths (M), bad [(path, reason)])``.
    """
    good, bad, tensors = [], [], []
    for path in paths:
        try:
            tensors.append(encoder.transform(read_image(path, encoder.image_mode)))
            good.append(path)
        except DataError as error:
            bad.append((path, str(error)))
    codes = []
    for s in range(0, len(tensors), encoder.batch_size):
        batch = torch.stack(tensors[s : s + encoder.batch_size]).to(encoder.device)
        codes.append(encoder.model.encode(batch).float().cpu())
    nbit = int(encoder.model.head.nbit)
    return (torch.cat(codes) if codes else torch.zeros((0, nbit))), good, bad


def query_files(query: Path) -> list[Path]:
    """The files of a query folder (recursively, hidden ones left out, sorted)."""
    files = sorted(
        p
        for p in query.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(query).parts)
    )
    if not files:
        raise DataError(
            f"The query folder {query} holds no files: pass an image, a folder of "
            "images or a codes .npz"
        )
    return files


def load_query_codes(path: Path, nbit: int) -> np.ndarray:
    """Packed ``(Q, ceil(nbit/8))`` uint8 query codes from an .npz (``codes``: real-valued
    ``(Q, nbit)``, as val.py's ``query_codes``; or ``packed``: uint8 from np.packbits)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except Exception as error:  # noqa: BLE001 - any unreadable file is one sentence
        raise DataError(
            f"cannot read query codes {path} ({type(error).__name__}): pass an .npz "
            "with an array 'codes' (Q, nbit) or 'packed' (Q, nbit/8) uint8"
        ) from None
    nbytes = faiss_dim(nbit) // 8
    if "packed" in arrays:
        packed = arrays["packed"]
        if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != nbytes:
            raise DataError(
                f"{path}: 'packed' must be (Q, {nbytes}) uint8 for this {nbit}-bit "
                f"index, got {packed.dtype} {packed.shape}"
            )
        packed = packed.copy()
        if nbit % 8:  # padding bits must not count
            packed[:, -1] &= np.uint8((0xFF << (8 - nbit % 8)) & 0xFF)
        return packed
    key = "codes" if "codes" in arrays else "query_codes" if "query_codes" in arrays else None
    if key is None:
        raise DataError(
            f"{path} holds none of the arrays 'codes', 'query_codes' or 'packed' "
            f"(it has {', '.join(arrays) or 'nothing'})"
        )
    codes = arrays[key]
    if codes.ndim != 2 or codes.shape[1] != nbit:
        raise DataError(
            f"{path}: '{key}' has shape {codes.shape} but the index holds {nbit}-bit "
            f"codes: query with codes of the same model"
        )
    if codes.dtype.kind == "u":
        raise DataError(
            f"{path}: '{key}' is {codes.dtype}, which would be read as real-valued "
            "codes where every bit is +1: store packed codes under 'packed'"
        )
    try:
        return pack(codes)
    except ValueError as error:
        raise DataError(f"{path}: '{key}' {error}") from None


def _label(labels: np.ndarray, i: int):
    value = labels[i]
    return np.flatnonzero(value).tolist() if np.ndim(value) else value.item()


def search_run(
    index,
    query,
    k: int = 10,
    logdir=None,
    nprobe=None,
    ef_search=None,
    device: str = "auto",
    batch_size: int = 64,
) -> dict[str, Any]:
    """Search the index folder ``index`` with ``query`` (an image, a folder or a codes .npz).

    Returns a JSON-ready dict: ``queries``: one entry per query with ``results`` (rank, index,
    id, distance, label) sorted by (distance, index); ``bad``: unreadable files of a folder.
    """
    store = load_index_dir(index)
    man = store.manifest
    k = check_k(k, len(store))
    params = dict(man["params"])
    for key, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        if value is None:
            continue
        if key not in params:
            raise ConfigError(
                f"{key} applies to index_type={'ivf' if key == 'nprobe' else 'hnsw'}"
                f", but {store.path} is a {params['index_type']} index"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        params[key] = value
    set_search_params(store.index, params)
    query = Path(query)
    if not query.exists():
        raise DataError(
            f"The query {query} does not exist: pass an image, a folder of images or a codes .npz"
        )
    bad: list[tuple[Path, str]] = []
    if query.is_file() and query.suffix.lower() == ".npz":
        packed = load_query_codes(query, store.nbit)
        names = [f"{query}[{i}]" for i in range(len(packed))]
        if not len(packed):
            raise DataError(f"{query} holds no query codes")
    else:
        run_dir = Path(logdir) if logdir is not None else store.path.resolve().parent
        if logdir is None and not (run_dir / "config.yaml").is_file():
            raise DataError(
                f"{store.path} is not inside its run directory: pass logdir=<the run "
                f"that exported it> (it was {man.get('run')})"
            )
        encoder = load_encoder(run_dir, man, device, batch_size)
        paths = query_files(query) if query.is_dir() else [query]
        codes, good, bad = encode_images(encoder, paths)
        if not good:
            if not query.is_dir():
                raise DataError(f"The query {bad[0][1]}: pass an image file (PNG, JPEG, ...)")
            raise DataError(
                f"None of the {len(paths)} files in {query} could be read as an "
                f"image (first: {bad[0][1]})"
            )
        packed = pack(codes)
        names = [str(p) for p in good]
    D, I = search_index(store.index, packed, k)
    queries = []
    for q, name in enumerate(names):
        results = [
            {
                "rank": r + 1,
                "index": int(i),
                "id": store.ids[i].item(),
                "distance": int(d),
                "label": _label(store.labels, int(i)),
            }
            for r, (d, i) in enumerate(zip(D[q], I[q]))
            if i >= 0
        ]
        queries.append({"query": name, "results": results})
    return {
        "index": str(store.path),
        "index_type": params["index_type"],
        "params": params,
        "nbit": store.nbit,
        "k": k,
        "id_kind": man["id_kind"],
        "queries": queries,
        "bad": [{"path": str(p), "error": reason} for p, reason in bad],
    }


# --------------------------------------------------------------------------------------------
# Result grid
# --------------------------------------------------------------------------------------------


def _database_loader(store: CodeIndex, logdir=None):
    """``i -> PIL image`` of database item i (paths, or the run's dataset for index ids)."""
    if store.manifest["id_kind"] == "path":
        return lambda i: Image.open(str(store.ids[i])).convert("RGB")
    run_dir = Path(logdir) if logdir is not None else store.path.resolve().parent
    try:
        database = build.build_data(load_run_config(run_dir)).database
    except Exception as error:  # noqa: BLE001 - the grid then shows placeholders
        log.warning("database images unavailable for the grid (%s)", error)
        return None
    return lambda i: database.load(int(i)).convert("RGB")


def save_grid(
    result: dict[str, Any], out, logdir=None, thumb: int = 96, max_queries: int = 32
) -> Path:
    """A PNG with one row per query: the query image, then its results with their distances."""
    from PIL import ImageDraw

    from utils.checkpoint import atomic_write

    store = load_index_dir(result["index"])
    load = _database_loader(store, logdir)
    rows = result["queries"][:max_queries]
    cols = 1 + result["k"]
    pad, text_h = 4, 14
    cell_w, cell_h = thumb + pad, thumb + text_h + pad
    grid = Image.new("RGB", (cols * cell_w + pad, len(rows) * cell_h + pad), "white")
    draw = ImageDraw.Draw(grid)

    def paste(image, col, row, caption):
        x, y = pad + col * cell_w, pad + row * cell_h
        if image is None:
            draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], fill=(200, 200, 200))
        else:
            image = image.copy()
            resample = Image.NEAREST if max(image.size) < thumb // 2 else Image.BICUBIC
            scale = thumb / max(image.size)
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample
            )
            grid.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
        draw.text((x, y + thumb + 1), caption, fill=(0, 0, 0))

    for row, entry in enumerate(rows):
        query_path = Path(entry["query"])
        try:
            query_image = Image.open(query_path).convert("RGB") if query_path.is_file() else None
        except _IMAGE_ERRORS:
            query_image = None
        paste(query_image, 0, row, "query")
        for col, hit in enumerate(entry["results"], start=1):
            try:
                image = load(hit["index"]) if load is not None else None
            except Exception:  # noqa: BLE001 - a missing database file: placeholder
                image = None
            label = hit["label"]
            label = f" y={label}" if not isinstance(label, list) else ""
            paste(image, col, row, f"d={hit['distance']} #{hit['index']}{label}")
    out = Path(out)
    atomic_write(out, lambda handle: grid.save(handle, format="PNG"))
    return out
