"""List files of the paper's ImageNet100, NUS-WIDE and MS-COCO from their official downloads.

``scripts/prepare_data.py`` is the command line; this module does the work. Each ``prepare_*``
reads an official download, builds train / query / database splits by the rules below, writes
``<out>/{train,test,database}.txt`` in the list-file format of ``datasets/listfile.py`` (one image
per line: ``path label`` or ``path 0 1 0 ...``) plus ``<out>/classes.txt`` (the class or concept
names in label order), and returns a :class:`Prepared` whose :meth:`Prepared.report` is printed.

Rules and their sources (methods.md §5.1 summarises the reference's shipped lists):

ImageNet100 (single-label, 100 classes)
  - classes: ``datasets/imagenet100_classes.txt``, the 100 wnids of the reference's list files
    with their class ids (its header says where they were read); ``--classes FILE`` replaces it.
  - query: every ImageNet-1k validation image of those classes (the reference's test.txt: 5,000
    validation images, 50 per class); training: 130 training images per class (the reference's
    train.txt: 13,000 lines, 130 per class), drawn per class with the seed; database: every
    training image of those classes, the training images included (the supplement's "remaining
    128K"; the HashNet ImageNet protocol, whose training points are drawn from the database).
  - with ``--reference-lists DIR`` (DIR holding the reference's train.txt and test.txt) the training
    and query images are exactly the reference's, where they exist in the source (matched by file
    name); each line's class id is checked against the class list.
NUS-WIDE (multi-label, 21 concepts)
  - concepts: the 21 most frequent of the official 81 (the reference's 21-d labels; the DPSH /
    DeepHash convention), counted over the whole official image list, ties broken by name; label
    vectors list them in alphabetical order (the order of the official concept list).
  - images: those with at least one of the 21 concepts (and present on disk).
  - query: 100 images per concept, training: 500 per concept drawn from the non-query images
    (2,100 / 10,500, the reference's sizes; the DPSH per-class sampling of NUS-WIDE), database:
    every non-query image, the training images included (the supplement's ~193K).
MS-COCO (multi-label, 80 categories)
  - labels: the 80 categories of the official instances annotations (train + val, 2014 or 2017),
    ordered by category id, an image's vector marking every category it has an annotation of.
  - images: those with at least one label (and present on disk).
  - query: 5,000 images drawn at random, training: 10,000 drawn from the rest, database: every
    non-query image, the training images included (the HashNet COCO protocol; the reference's
    5,000 / 10,000 and the supplement's ~117K).

Paths are written relative to the data folder (the parent of ``out``, which the dataset configs'
``image_root: null`` resolves them against) when the images lie under it, else absolute.
Every draw comes from one ``np.random.RandomState(seed)``, and every list is in a fixed order, so
a seed always gives the same files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets.imagefolder import extension_problem, image_header_problem, scan_class_folders
from utils.checkpoint import write_bytes
from utils.errors import DataError

REPO = Path(__file__).resolve().parents[1]
IMAGENET100_CLASSES = REPO / "datasets" / "imagenet100_classes.txt"
SPLIT_FILES = {"train": "train.txt", "query": "test.txt", "database": "database.txt"}


@dataclass
class Prepared:
    """The splits of a prepared dataset.

    Attributes:
        name: dataset name.
        paths: ``split -> N`` image paths as written (``split`` in train / query / database).
        labels: ``split -> (N,)`` int64 class ids or ``(N, C)`` uint8 multi-hot.
        classes: class or concept names in label order.
        notes: lines printed before the statistics (what was read, skipped, matched).
    """

    name: str
    paths: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    classes: list[str]
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        """Split sizes and label statistics, one block per split."""
        kind, kinds = {"nuswide": ("concept", "concepts"), "coco": ("category", "categories")}.get(
            self.name, ("class", "classes")
        )
        lines = [f"{self.name}: {len(self.classes)} {kinds}", *self.notes]
        for split in ("train", "query", "database"):
            labels = self.labels[split]
            n = len(labels)
            if self.multilabel:
                per_image = labels.sum(1) if n else np.zeros(1)
                per_class = labels.sum(0)
                lines.append(
                    f"  {split:<9}{n:>9,} images  labels per image {per_image.min():.0f}..{per_image.max():.0f} "
                    f"(mean {per_image.mean():.2f})  images per {kind} {per_class.min():,}..{per_class.max():,}"
                )
            else:
                per_class = np.bincount(labels, minlength=len(self.classes))
                lines.append(
                    f"  {split:<9}{n:>9,} images  images per class {per_class.min():,}..{per_class.max():,} (mean {per_class.mean():.1f})"
                )
        if self.multilabel:
            counts = self.labels["database"].sum(0)
            lines.append(
                f"  database images per {kind}: "
                + ", ".join(f"{c} {k:,}" for c, k in zip(self.classes, counts))
            )
        return "\n".join(lines)

    @property
    def multilabel(self) -> bool:
        return self.labels["train"].ndim == 2

    def write(self, out) -> list[Path]:
        """Write the list files and classes.txt under ``out``; returns their paths.

        Every line is formatted (and checked) before the first file is written, and each file is
        written atomically (temporary file, then rename), so no file is ever half-written.
        """
        out = Path(out)
        texts = {}
        for split, filename in SPLIT_FILES.items():
            rows = []
            for path, label in zip(self.paths[split], self.labels[split]):
                if any(ch.isspace() for ch in path):
                    raise DataError(
                        f"Image path {path!r} contains whitespace, which the list-file format cannot hold: rename the file or folder."
                    )
                label_text = (
                    " ".join(str(int(v)) for v in label) if self.multilabel else str(int(label))
                )
                rows.append(f"{path} {label_text}\n")
            texts[filename] = "".join(rows).encode()
        texts["classes.txt"] = "".join(f"{c}\n" for c in self.classes).encode()
        for filename, text in texts.items():
            write_bytes(out / filename, text)
        return [out / filename for filename in texts]


def list_path(image: Path, data_dir: Path) -> str:
    """``image`` relative to ``data_dir`` when it lies under it, else absolute (POSIX separators)."""
    image, data_dir = Path(os.path.abspath(image)), Path(os.path.abspath(data_dir))
    try:
        return image.relative_to(data_dir).as_posix()
    except ValueError:
        return image.as_posix()


def _check_files(paths: list[Path], check_images: bool) -> tuple[np.ndarray, list[str]]:
    """``(keep, notes)``: a bool mask of the usable files, and a note naming the first skipped ones."""
    keep = np.ones(len(paths), dtype=bool)
    skipped = []
    for i, path in enumerate(paths):
        problem = (
            (image_header_problem(str(path)) if check_images else extension_problem(str(path)))
            if path.is_file()
            else "missing"
        )
        if problem is not None:
            keep[i] = False
            skipped.append(f"{path} ({problem})")
    notes = []
    if skipped:
        notes.append(
            f"  skipped {len(skipped):,} listed image(s) that are missing or unreadable: {'; '.join(skipped[:5])}{'; ...' if len(skipped) > 5 else ''}"
        )
    return keep, notes


# ----------------------------------------------------------------------------------------------
# ImageNet100


def read_class_list(path) -> list[str]:
    """The wnids of a class-list file (one per line, ``#`` comments and blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"Class list {path} not found: give a text file with one ImageNet wnid (e.g. n01440764) per line."
        )
    wnids = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    wnids = [w for w in wnids if w]
    bad = [w for w in wnids if not re.fullmatch(r"n\d{8}", w)]
    if bad or not wnids or len(set(wnids)) != len(wnids):
        what = (
            f"{bad[0]!r} is not a wnid"
            if bad
            else ("it is empty" if not wnids else "a wnid appears twice")
        )
        raise DataError(
            f"Class list {path} is not a list of distinct ImageNet wnids ({what}): write one wnid like n01440764 per line."
        )
    return wnids


def _reference_list(path: Path) -> list[tuple[int, str, int]]:
    """``(line number, file name, class id)`` of a reference list file (``any/path/<name> <id>``)."""
    if not path.is_file():
        raise DataError(
            f"Reference list {path} not found: --reference-lists must hold the reference's train.txt and test.txt."
        )
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2 or not tokens[1].isdigit():
            raise DataError(
                f"{path} line {lineno} is not 'path class-id': give the reference's ImageNet100 list files."
            )
        rows.append((lineno, tokens[0].replace("\\", "/").rsplit("/", 1)[-1], int(tokens[1])))
    return rows


def prepare_imagenet100(
    source,
    out,
    classes=None,
    reference_lists=None,
    train_per_class: int = 130,
    seed: int = 42,
    check_images: bool = True,
) -> Prepared:
    """ImageNet100 from an ImageNet-1k ``train/<wnid>/`` + ``val/<wnid>/`` folder (rules: module docstring).

    Args:
        source: the ImageNet-1k folder in torchvision's class-folder layout.
        out: the output folder (``<data_dir>/imagenet100``).
        classes: a class-list file (default :data:`IMAGENET100_CLASSES`).
        reference_lists: a folder with the reference's ``train.txt`` and ``test.txt``, or None.
        train_per_class: training images per class when no reference list is given (130).
        seed: seed of the training draw.
        check_images: read every header once and skip unreadable files (listed in the notes).
    """
    source, out = Path(source), Path(out)
    class_file = Path(classes) if classes is not None else IMAGENET100_CLASSES
    wnids = read_class_list(class_file)
    expected = "<source>/train/<wnid>/*.JPEG and <source>/val/<wnid>/*.JPEG (the ImageNet-1k class-folder layout of torchvision's ImageNet and ImageFolder)"
    if not ((source / "train").is_dir() and (source / "val").is_dir()):
        raise DataError(f"{source} is not an ImageNet-1k folder: expected {expected}.")
    for part in ("train", "val"):
        missing = [w for w in wnids if not (source / part / w).is_dir()]
        if missing:
            hint = (
                " (sort the validation images into class folders, as torchvision.datasets.ImageNet does from the devkit)"
                if part == "val" and len(missing) == len(wnids)
                else ""
            )
            raise DataError(
                f"{source}/{part} lacks {len(missing)} of the {len(wnids)} classes ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): expected {expected}{hint}."
            )
    class_to_idx = {w: i for i, w in enumerate(wnids)}
    notes = [f"  classes from {class_file}", f"  source {source}"]
    pools = {}
    for part in ("train", "val"):
        paths, labels, _, rejected = scan_class_folders(source / part, class_to_idx, check_images)
        pools[part] = (paths, labels)
        if rejected:
            notes.append(
                f"  skipped {len(rejected):,} file(s) in {part}/ that are not readable images: "
                + "; ".join(f"{p} ({why})" for p, why in rejected[:5])
                + ("; ..." if len(rejected) > 5 else "")
            )
    train_paths, train_labels = pools["train"]
    val_paths, val_labels = pools["val"]

    if reference_lists is None:
        rng = np.random.RandomState(seed)
        train_idx, query_idx = [], np.arange(len(val_paths))
        for c in range(len(wnids)):
            idx = np.flatnonzero(train_labels == c)
            if len(idx) < train_per_class:
                raise DataError(
                    f"Class {wnids[c]} has {len(idx)} training images, fewer than --train-per-class {train_per_class}: lower it or complete the download."
                )
            train_idx.append(np.sort(rng.permutation(idx)[:train_per_class]))
        train_idx = np.concatenate(train_idx)
        notes.append(
            f"  training images: {train_per_class} per class drawn with seed {seed}; queries: every validation image of the classes"
        )
    else:
        reference_lists = Path(reference_lists)
        chosen = {}
        for split, filename, paths, labels in (
            ("train", "train.txt", train_paths, train_labels),
            ("query", "test.txt", val_paths, val_labels),
        ):
            by_name = {os.path.basename(p): i for i, p in enumerate(paths)}
            rows = _reference_list(reference_lists / filename)
            found, absent = [], 0
            for lineno, name, class_id in rows:
                wnid = name.split("_")[0] if split == "train" else None
                if not 0 <= class_id < len(wnids) or (wnid is not None and wnid != wnids[class_id]):
                    raise DataError(
                        f"{reference_lists / filename} line {lineno} gives {name} class {class_id}, but the class list "
                        f"{class_file} has {wnids[class_id] if 0 <= class_id < len(wnids) else 'no such class'} there: give the class list that matches these lists (--classes)."
                    )
                i = by_name.get(name)
                if i is None:
                    absent += 1
                    continue
                if labels[i] != class_id:
                    raise DataError(
                        f"{reference_lists / filename} line {lineno} gives {name} class {wnids[class_id]}, but the source has it under {wnids[labels[i]]}: the source or the list is not the reference's ImageNet."
                    )
                found.append(i)
            chosen[split] = np.asarray(sorted(set(found)), dtype=np.int64)
            notes.append(
                f"  {filename} of the reference: {len(rows):,} lines, {len(chosen[split]):,} found in the source, {absent:,} absent (left out)"
            )
        train_idx, query_idx = chosen["train"], chosen["query"]

    return Prepared(
        name="imagenet100",
        paths={
            "train": [list_path(Path(train_paths[i]), out.parent) for i in train_idx],
            "query": [list_path(Path(val_paths[i]), out.parent) for i in query_idx],
            "database": [list_path(Path(p), out.parent) for p in train_paths],
        },
        labels={
            "train": train_labels[train_idx],
            "query": val_labels[query_idx],
            "database": train_labels,
        },
        classes=wnids,
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------
# NUS-WIDE


def _nuswide_relative(line: str) -> str:
    r"""An Imagelist.txt entry as a path under the images folder: ``Flickr/<category>/<file>.jpg``.

    The official list holds the authors' Windows paths (``C:\ImageData\Flickr\actor\0001_2124494179.jpg``);
    copies relative to the Flickr folder (``actor\0001_2124494179.jpg``) are read too.
    """
    path = line.strip().replace("\\", "/")
    if "ImageData/" in path:
        path = path.split("ImageData/", 1)[1]
    path = path.lstrip("/")
    return path if path.startswith("Flickr/") else "Flickr/" + path


def prepare_nuswide(
    source,
    out,
    images=None,
    nconcepts: int = 21,
    queries_per_concept: int = 100,
    train_per_concept: int = 500,
    seed: int = 42,
    check_images: bool = True,
) -> Prepared:
    """NUS-WIDE from the official image list and concept label files (rules: module docstring).

    Args:
        source: folder holding ``ImageList/Imagelist.txt`` and ``Groundtruth/AllLabels/Labels_<concept>.txt``.
        out: the output folder (``<data_dir>/nuswide``).
        images: folder the list's paths (``Flickr/<category>/<file>.jpg``) are under; default ``source``.
        nconcepts: number of most frequent concepts kept (21).
        queries_per_concept, train_per_concept: per-concept draws (100, 500).
        seed: seed of the draws.
        check_images: read every header once (else only check that the files exist).
    """
    source, out = Path(source), Path(out)
    images = source if images is None else Path(images)
    list_file = source / "ImageList" / "Imagelist.txt"
    label_files = sorted((source / "Groundtruth" / "AllLabels").glob("Labels_*.txt"))
    if not list_file.is_file() or not label_files:
        raise DataError(
            f"{source} is not a NUS-WIDE download: expected ImageList/Imagelist.txt and Groundtruth/AllLabels/Labels_<concept>.txt (the official NUS-WIDE image list and concept label files)."
        )
    entries = [
        _nuswide_relative(line) for line in list_file.read_text().splitlines() if line.strip()
    ]
    concepts = [f.stem[len("Labels_") :] for f in label_files]
    if len(concepts) < nconcepts:
        raise DataError(
            f"{source}/Groundtruth/AllLabels has {len(concepts)} concept files, fewer than the {nconcepts} to keep: use the complete NUS-WIDE label files."
        )
    columns = []
    for f in label_files:
        values = f.read_text().split()
        if len(values) != len(entries) or any(v not in ("0", "1") for v in values):
            raise DataError(
                f"{f} does not hold one 0/1 value per line of {list_file} ({len(values):,} values for {len(entries):,} images): use the official label files of the same download."
            )
        columns.append(np.asarray(values, dtype=np.uint8))
    full = np.stack(columns, axis=1)  # (N, 81)
    frequency = full.sum(0)
    top = sorted(range(len(concepts)), key=lambda j: (-int(frequency[j]), concepts[j]))[:nconcepts]
    keep_concepts = sorted(
        top, key=lambda j: concepts[j]
    )  # label vector in the official (alphabetical) order
    labels = full[:, keep_concepts]
    names = [concepts[j] for j in keep_concepts]
    notes = [
        f"  {len(entries):,} images in the official list, {len(concepts)} concepts; kept the {nconcepts} most frequent: "
        + ", ".join(names)
    ]

    candidates = np.flatnonzero(labels.sum(1) > 0)
    keep, skipped = _check_files([images / entries[i] for i in candidates], check_images)
    pool = candidates[keep]
    notes.append(
        f"  {len(candidates):,} images have at least one of them, {len(pool):,} of these are on disk under {images}"
    )
    notes += skipped

    rng = np.random.RandomState(seed)
    taken = np.zeros(len(labels), dtype=bool)
    in_pool = np.zeros(len(labels), dtype=bool)
    in_pool[pool] = True

    def per_concept(count: int, what: str) -> np.ndarray:
        drawn = []
        for j, name in enumerate(names):
            options = np.flatnonzero(in_pool & ~taken & (labels[:, j] > 0))
            if len(options) < count:
                raise DataError(
                    f"Concept {name!r} has {len(options)} images left for {what}, fewer than {count}: lower the per-concept size or use the complete download."
                )
            pick = rng.choice(options, size=count, replace=False)
            taken[pick] = True
            drawn.append(pick)
        return np.sort(np.concatenate(drawn))

    query = per_concept(queries_per_concept, "queries")
    train = per_concept(train_per_concept, "training")
    database = np.setdiff1d(pool, query)
    split = {"train": train, "query": query, "database": database}
    return Prepared(
        name="nuswide",
        paths={
            k: [list_path(images / entries[i], out.parent) for i in idx] for k, idx in split.items()
        },
        labels={k: labels[idx] for k, idx in split.items()},
        classes=names,
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------
# MS-COCO


def _load_instances(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(
            f"{path} is not readable JSON ({type(err).__name__}): download the official COCO instances annotations again."
        ) from err
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(
            f"{path} is not a COCO instances file: expected a JSON object with 'images', 'annotations' and 'categories' lists."
        )
    return data


def prepare_coco(
    source,
    out,
    year: str | None = None,
    n_query: int = 5000,
    n_train: int = 10000,
    seed: int = 42,
    check_images: bool = True,
) -> Prepared:
    """MS-COCO from the official instances annotations (rules: module docstring).

    Args:
        source: the COCO folder: ``annotations/instances_{train,val}<year>.json`` and the image
            folders ``train<year>/``, ``val<year>/``.
        out: the output folder (``<data_dir>/coco``).
        year: ``"2014"`` or ``"2017"``; default: the one present (2014 when both are).
        n_query, n_train: sizes of the random draws (5,000, 10,000).
        seed: seed of the draws.
        check_images: read every header once (else only check that the files exist).
    """
    source, out = Path(source), Path(out)
    years = [year] if year is not None else ["2014", "2017"]
    present = [
        y
        for y in years
        if all(
            (source / "annotations" / f"instances_{p}{y}.json").is_file() for p in ("train", "val")
        )
    ]
    if not present:
        raise DataError(
            f"{source} is not an MS-COCO download: expected annotations/instances_train{years[0]}.json and annotations/instances_val{years[0]}.json "
            "(the official COCO instances annotations, 2014 or 2017) beside the train and val image folders."
        )
    year = present[0]
    categories, files, labels_of = None, [], []
    for part in ("train", "val"):
        data = _load_instances(source / "annotations" / f"instances_{part}{year}.json")
        cats = sorted(int(c["id"]) for c in data["categories"])
        if categories is None:
            categories, names = (
                cats,
                {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]},
            )
        elif cats != categories:
            raise DataError(
                f"instances_train{year}.json and instances_val{year}.json list different categories: use the two files of one official release."
            )
        column = {cid: j for j, cid in enumerate(categories)}
        image_ids = sorted(int(img["id"]) for img in data["images"])
        file_of = {int(img["id"]): img["file_name"] for img in data["images"]}
        row_of = {iid: r for r, iid in enumerate(image_ids)}
        labels = np.zeros((len(image_ids), len(categories)), dtype=np.uint8)
        for ann in data["annotations"]:
            try:
                labels[row_of[int(ann["image_id"])], column[int(ann["category_id"])]] = 1
            except KeyError:
                raise DataError(
                    f"instances_{part}{year}.json has an annotation of an unknown image or category ({ann.get('image_id')}, {ann.get('category_id')}): use the official file."
                ) from None
        files += [source / f"{part}{year}" / file_of[iid] for iid in image_ids]
        labels_of.append(labels)
    labels = np.concatenate(labels_of)
    names = [names[c] for c in categories]
    notes = [f"  instances {year}: {len(files):,} images, {len(categories)} categories"]
    candidates = np.flatnonzero(labels.sum(1) > 0)
    keep, skipped = _check_files([files[i] for i in candidates], check_images)
    pool = candidates[keep]
    notes.append(
        f"  {len(candidates):,} images have at least one label, {len(pool):,} of these are on disk"
    )
    notes += skipped
    if len(pool) < n_query + n_train:
        raise DataError(
            f"Only {len(pool):,} labelled COCO images are usable, fewer than {n_query:,} queries + {n_train:,} training images: lower the sizes or complete the download."
        )

    rng = np.random.RandomState(seed)
    order = rng.permutation(pool)
    query, rest = np.sort(order[:n_query]), order[n_query:]
    train = np.sort(rest[rng.permutation(len(rest))[:n_train]])
    split = {"train": train, "query": query, "database": np.sort(rest)}
    return Prepared(
        name="coco",
        paths={k: [list_path(files[i], out.parent) for i in idx] for k, idx in split.items()},
        labels={k: labels[idx] for k, idx in split.items()},
        classes=names,
        notes=notes,
    )
