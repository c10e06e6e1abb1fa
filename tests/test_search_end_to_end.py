"""Export -> search on a digits run (scripts/export.py, scripts/search.py, utils/compose/search.py).

The run trains its head from the feature cache (backbone=tiny, feature_cache=on), so the
exported codes come from cached features while a search by image must go through the real
backbone: a query image of database item i must get exactly the exported code of item i.
Oracles: val.py's codes and mAP, and the engine's (distance, index) ranking.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, compose_run, run_cli, val_config

pytest.importorskip("faiss", reason="faiss-cpu is not installed (requirements.txt)")
pytestmark = pytest.mark.slow  # one training run (~20 s) shared by the module

NBIT = 16
N_DB = 1597  # digits database split


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXPORT, SEARCH = load_script("export"), load_script("search")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained digits run with val.py's codes and an exported flat index."""
    from utils.compose.experiment import train, validate

    tmp = tmp_path_factory.mktemp("search")
    cfg = compose_run(
        ["backbone=tiny", f"model.nbit={NBIT}", "epochs=1", "eval_interval=1", "feature_cache=on"],
        tmp,
    )
    train(cfg)
    logdir = tmp / "run"
    evaluation = validate(val_config(logdir, "save_codes=true"))
    EXPORT.main([f"logdir={logdir}", "progress=false"])
    with np.load(logdir / "codes" / "best.npz") as stored:
        codes = {k: stored[k] for k in stored.files}
    return {"logdir": logdir, "tmp": tmp, "codes": codes, "eval": evaluation}


def engine_ranking(query_codes, db_codes, k):
    from utils.retrieval import hamming_distance

    dist = hamming_distance(query_codes, db_codes).numpy()
    order = np.lexsort((np.broadcast_to(np.arange(dist.shape[1]), dist.shape), dist), axis=1)
    order = order[:, :k]
    return np.take_along_axis(dist, order, 1), order


def search_json(capsys, *args):
    capsys.readouterr()
    SEARCH.main([*args, "--json"])
    return json.loads(capsys.readouterr().out)


def fails(capsys, main, args, match):
    """``main(args)`` ends with exit status 2 and one 'error: ...' line matching ``match``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert match in err[0], err[0]
    return err[0]


def save_digit(database_index, path):
    from datasets.digits import digits_splits

    digits_splits().database.load(database_index).save(path)


def test_export_writes_val_codes_ids_labels_manifest(run):
    from utils.code_index import pack
    from utils.retrieval import mean_average_precision

    index = run["logdir"] / "index"
    assert sorted(p.name for p in index.iterdir()) == [
        "codes.npy",
        "faiss.index",
        "ids.npy",
        "labels.npy",
        "manifest.json",
    ]
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["nbit"] == NBIT and manifest["bytes_per_code"] == 2
    assert manifest["model"] == "sdc" and manifest["checkpoint"] == "best"
    assert manifest["dataset"] == "digits" and manifest["count"] == N_DB
    assert manifest["binarisation"].startswith("b = +1 where u >= 0 else -1")
    assert manifest["params"] == {"index_type": "flat"}
    assert manifest["id_kind"] == "index" and manifest["image_mode"] == "L"
    assert manifest["date"].endswith("+00:00")
    codes = np.load(index / "codes.npy")
    np.testing.assert_array_equal(codes, pack(run["codes"]["database_codes"]))
    np.testing.assert_array_equal(np.load(index / "ids.npy"), np.arange(N_DB))
    np.testing.assert_array_equal(np.load(index / "labels.npy"), run["codes"]["database_labels"])
    # the exported packed codes score exactly what val.py scored
    query = pack(run["codes"]["query_codes"])
    got = mean_average_precision(
        query,
        codes,
        run["codes"]["query_labels"],
        np.load(index / "labels.npy"),
        R=100,
        packed=True,
        nbit=NBIT,
    )
    assert got == run["eval"]["mAP@100"]


def test_search_by_image_uses_the_real_backbone(run, tmp_path, capsys):
    from utils.code_index import load_index_dir
    from utils.compose.search import encode_images, load_encoder

    folder = tmp_path / "queries"
    folder.mkdir()
    picks = [3, 77, 1000]
    for i in picks:
        save_digit(i, folder / f"db{i:04d}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    store = load_index_dir(run["logdir"] / "index")
    encoder = load_encoder(run["logdir"], store.manifest, device="cpu")
    assert type(encoder.model.backbone).__name__ == "Tiny"  # not the cache's identity
    codes, good, bad = encode_images(encoder, sorted(folder.glob("db*.png")))
    db_codes = run["codes"]["database_codes"]
    # the real backbone + eval transform reproduce the cached-feature codes bit for bit
    np.testing.assert_array_equal(codes.numpy() >= 0, db_codes[picks] >= 0)

    result = search_json(capsys, f"index={run['logdir'] / 'index'}", f"query={folder}", "k=25")
    assert [Path(b["path"]).name for b in result["bad"]] == ["broken.png", "notes.txt"]
    assert [Path(q["query"]).name for q in result["queries"]] == [f"db{i:04d}.png" for i in picks]
    D_ref, I_ref = engine_ranking(torch.from_numpy(db_codes[picks]), db_codes, 25)
    for q, entry in enumerate(result["queries"]):
        assert [h["index"] for h in entry["results"]] == I_ref[q].tolist()
        assert [h["distance"] for h in entry["results"]] == D_ref[q].tolist()
        assert [h["rank"] for h in entry["results"]] == list(range(1, 26))
        assert picks[q] in [h["index"] for h in entry["results"] if h["distance"] == 0]
        labels = run["codes"]["database_labels"]
        assert [h["label"] for h in entry["results"]] == labels[I_ref[q]].tolist()


def test_search_by_codes_equals_the_engine_and_text_output(run, tmp_path, capsys):
    from utils.checkpoint import write_npz

    query_codes = run["codes"]["query_codes"][:12]
    write_npz(tmp_path / "q.npz", codes=query_codes)
    result = search_json(
        capsys, f"index={run['logdir'] / 'index'}", f"query={tmp_path / 'q.npz'}", "k=40"
    )
    D_ref, I_ref = engine_ranking(torch.from_numpy(query_codes), run["codes"]["database_codes"], 40)
    assert len(result["queries"]) == 12
    for q, entry in enumerate(result["queries"]):
        assert [h["index"] for h in entry["results"]] == I_ref[q].tolist()
        assert [h["distance"] for h in entry["results"]] == D_ref[q].tolist()
    # packed query codes and val.py's own codes file give the same answer
    write_npz(tmp_path / "p.npz", packed=np.packbits(query_codes >= 0, axis=1))
    assert (
        search_json(
            capsys, f"index={run['logdir'] / 'index'}", f"query={tmp_path / 'p.npz'}", "k=40"
        )["queries"][3]["results"]
        == result["queries"][3]["results"]
    )
    capsys.readouterr()
    SEARCH.main([f"index={run['logdir'] / 'index'}", f"query={tmp_path / 'q.npz'}", "k=2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{tmp_path / 'q.npz'}[0]:"
    assert lines[1].split()[:3] == ["1", f"d={D_ref[0, 0]}", str(I_ref[0, 0])]


def test_grid_png(run, tmp_path, capsys):
    folder = tmp_path / "queries"
    folder.mkdir()
    for i in (5, 900):
        save_digit(i, folder / f"db{i}.png")
    SEARCH.main(
        [
            f"index={run['logdir'] / 'index'}",
            f"query={folder}",
            "k=4",
            "--grid",
            str(tmp_path / "grid.png"),
        ]
    )
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (5 * 100 + 4, 2 * 114 + 4)  # (1 + k) columns, one row per query
        pixels = np.asarray(grid.convert("L"))
    # the query thumbnail is the digit itself (upscaled 12x, nearest): 8x8 distinct blocks
    assert len(np.unique(pixels[4:100, 4:100])) > 5


def test_reexport_replaces_the_index_with_ivf_and_hnsw(run, tmp_path, capsys):
    logdir = tmp_path / "run"
    shutil.copytree(run["logdir"], logdir)
    (logdir / "index" / "stray.txt").write_text("from an older export")
    flat = search_json(
        capsys, f"index={logdir / 'index'}", "query=" + str(_codes_file(run, tmp_path)), "k=10"
    )
    EXPORT.main([f"logdir={logdir}", "progress=false", "index_type=ivf", "nlist=8", "nprobe=2"])
    assert not (logdir / "index" / "stray.txt").exists()
    manifest = json.loads((logdir / "index" / "manifest.json").read_text())
    assert manifest["params"] == {"index_type": "ivf", "nlist": 8, "nprobe": 2}
    every_list = search_json(
        capsys,
        f"index={logdir / 'index'}",
        "query=" + str(_codes_file(run, tmp_path)),
        "k=10",
        "nprobe=8",
    )
    assert every_list["params"]["nprobe"] == 8
    for a, b in zip(flat["queries"], every_list["queries"]):  # all lists probed: exact distances
        assert [h["distance"] for h in a["results"]] == [h["distance"] for h in b["results"]]
    fails(
        capsys,
        SEARCH.main,
        [f"index={logdir / 'index'}", "query=x.npz", "efSearch=5"],
        "efSearch applies to index_type=hnsw, but",
    )

    EXPORT.main([f"logdir={logdir}", "progress=false", "index_type=hnsw", "efSearch=400"])
    manifest = json.loads((logdir / "index" / "manifest.json").read_text())
    assert manifest["params"] == {
        "index_type": "hnsw",
        "M": 32,
        "efConstruction": 40,
        "efSearch": 400,
    }
    hnsw = search_json(
        capsys, f"index={logdir / 'index'}", "query=" + str(_codes_file(run, tmp_path)), "k=10"
    )
    for a, b in zip(flat["queries"], hnsw["queries"]):
        exact, approx = [h["distance"] for h in a["results"]], [h["distance"] for h in b["results"]]
        assert all(x >= y for x, y in zip(approx, exact))  # never better than exact
        assert approx[-1] == exact[-1]  # efSearch 400 on 1,597 codes: the exact k-th distance


def _codes_file(run, tmp_path):
    from utils.checkpoint import write_npz

    path = tmp_path / "codes.npz"
    if not path.exists():
        write_npz(path, codes=run["codes"]["query_codes"][:20])
    return path


def test_export_is_atomic_when_it_fails(run, tmp_path, monkeypatch, capsys):
    import faiss

    logdir = tmp_path / "run"
    shutil.copytree(run["logdir"], logdir)
    before = {p.name: p.read_bytes() for p in (logdir / "index").iterdir()}

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index_binary", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        EXPORT.main([f"logdir={logdir}", "progress=false", "index_type=ivf"])
    assert {p.name: p.read_bytes() for p in (logdir / "index").iterdir()} == before
    hidden = sorted(p.name for p in logdir.iterdir() if p.name.startswith("."))
    assert hidden == [".train.lock"]  # the training's run lock (empty); no temporary file


def test_bad_input_is_one_sentence(run, tmp_path, capsys):
    from utils.checkpoint import write_npz

    index = run["logdir"] / "index"
    (tmp_path / "notes.txt").write_text("hello")
    save_digit(0, tmp_path / "ok.png")
    fails(
        capsys,
        SEARCH.main,
        [f"index={tmp_path / 'none'}", f"query={tmp_path / 'ok.png'}"],
        "does not exist: export one with python scripts/export.py",
    )
    fails(capsys, SEARCH.main, [f"index={index}", f"query={tmp_path / 'notes.txt'}"], "cannot read")
    fails(
        capsys,
        SEARCH.main,
        [f"index={index}", f"query={tmp_path / 'missing.png'}"],
        "does not exist",
    )
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "a.txt").write_text("x")
    fails(capsys, SEARCH.main, [f"index={index}", f"query={only_bad}"], "None of the 1 files in")
    fails(
        capsys,
        SEARCH.main,
        [f"index={index}", f"query={tmp_path / 'ok.png'}", "k=0"],
        "k must be >= 1",
    )
    fails(
        capsys,
        SEARCH.main,
        [f"index={index}", f"query={tmp_path / 'ok.png'}", "k=1598"],
        "k=1598 is larger than the database (1597 codes)",
    )
    fails(
        capsys,
        SEARCH.main,
        [f"index={index}", f"query={tmp_path / 'ok.png'}", "k=ten"],
        "k must be an integer",
    )
    fails(
        capsys,
        SEARCH.main,
        [f"index={index}", f"query={tmp_path / 'ok.png'}", "nprobe=4"],
        "nprobe applies to index_type=ivf, but",
    )
    fails(capsys, SEARCH.main, [f"index={index}", "kk=3", "query=x"], "unknown setting 'kk'")
    fails(capsys, SEARCH.main, [f"query={tmp_path / 'ok.png'}"], "missing setting index=")
    # codes of another width, and uint8 passed as real-valued codes
    write_npz(tmp_path / "wide.npz", codes=np.ones((2, 32), np.float32))
    fails(
        capsys,
        SEARCH.main,
        [f"index={index}", f"query={tmp_path / 'wide.npz'}"],
        "but the index holds 16-bit codes",
    )
    write_npz(tmp_path / "u8.npz", codes=np.ones((2, 16), np.uint8))
    fails(
        capsys,
        SEARCH.main,
        [f"index={index}", f"query={tmp_path / 'u8.npz'}"],
        "is uint8, which would be read as real-valued codes",
    )
    # an index built for another nbit (the run now says 32 bits) or other weights
    other = tmp_path / "other_nbit"
    shutil.copytree(run["logdir"], other)
    config = other / "config.yaml"
    config.write_text(config.read_text().replace(f"nbit: {NBIT}", "nbit: 32"))
    fails(
        capsys,
        SEARCH.main,
        [f"index={index}", f"query={tmp_path / 'ok.png'}", f"logdir={other}"],
        "The index was built for sdc with 16 bits but the run",
    )
    retrained = tmp_path / "retrained"
    shutil.copytree(run["logdir"], retrained)
    state = torch.load(retrained / "checkpoints" / "best.pt", weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name] + 1
    torch.save(state, retrained / "checkpoints" / "best.pt")
    fails(
        capsys,
        SEARCH.main,
        [f"index={retrained / 'index'}", f"query={tmp_path / 'ok.png'}"],
        "The index was exported from other weights than",
    )
    moved = tmp_path / "moved_index"
    shutil.copytree(index, moved)
    fails(
        capsys,
        SEARCH.main,
        [f"index={moved}", f"query={tmp_path / 'ok.png'}"],
        "is not inside its run directory: pass logdir=",
    )
    assert (
        search_json(
            capsys, f"index={moved}", f"query={tmp_path / 'ok.png'}", f"logdir={run['logdir']}"
        )["queries"][0]["results"][0]["distance"]
        == 0
    )
    # export
    fails(
        capsys,
        EXPORT.main,
        [f"logdir={run['logdir']}", "checkpoint=mid"],
        "checkpoint must be best or last",
    )
    fails(
        capsys,
        EXPORT.main,
        [f"logdir={run['logdir']}", "index_type=lsh"],
        "index_type must be one of flat, ivf, hnsw",
    )
    fails(
        capsys,
        EXPORT.main,
        [f"logdir={run['logdir']}", "nprobe=3"],
        "nprobe applies to index_type=ivf, not flat",
    )
    fails(capsys, EXPORT.main, [f"logdir={tmp_path / 'none'}"], "is not a directory")


def test_cli_exit_status(run, tmp_path):
    save_digit(0, tmp_path / "ok.png")
    good = run_cli(
        "scripts/search.py",
        [f"index={run['logdir'] / 'index'}", f"query={tmp_path / 'ok.png'}", "k=3"],
        tmp_path,
    )
    assert good.stdout.splitlines()[1].split()[:2] == ["1", "d=0"]
    bad = run_cli(
        "scripts/search.py",
        [f"index={run['logdir'] / 'index'}", f"query={tmp_path / 'ok.png'}", "k=0"],
        tmp_path,
        check=False,
    )
    assert bad.returncode == 2 and bad.stderr.strip() == "error: k must be >= 1, got k=0"


def test_list_file_dataset_ids_are_paths_and_the_grid_shows_them(tmp_path, capsys):
    """A run on image files (list-file format, RGB): ids are the image paths, queries are RGB."""
    from utils.compose.experiment import train

    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 200, 40), (40, 40, 230), (230, 230, 40)]
    root = tmp_path / "data"
    (root / "toy" / "img").mkdir(parents=True)
    lines = {"train": [], "query": [], "database": []}
    for i in range(96):
        c = i % 4
        pixels = np.clip(np.array(colours[c]) + rng.normal(0, 25, (20, 20, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / "toy" / "img" / f"{i:03d}.png")
        split = "query" if i < 8 else "database"
        lines[split].append(f"toy/img/{i:03d}.png {c}")
        if split == "database" and i < 72:
            lines["train"].append(f"toy/img/{i:03d}.png {c}")
    for split, rows in lines.items():
        (root / "toy" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    cfg = compose_run(
        [
            "dataset=imagenet100",
            "dataset.source.folder=toy",
            "dataset.source.query=query.txt",
            f"data_dir={root}",
            "dataset.R=10",
            "dataset.resize=16",
            "dataset.crop=16",
            "backbone=tiny",
            f"model.nbit={NBIT}",
            "epochs=1",
            "batch_size=16",
            "eval_interval=1",
        ],
        tmp_path,
    )
    train(cfg)
    logdir = tmp_path / "run"
    EXPORT.main([f"logdir={logdir}", "progress=false"])
    manifest = json.loads((logdir / "index" / "manifest.json").read_text())
    assert manifest["id_kind"] == "path" and manifest["image_mode"] == "RGB"
    database = [str(root / line.split()[0]) for line in lines["database"]]
    assert np.load(logdir / "index" / "ids.npy").tolist() == database
    query = root / "toy" / "img" / "050.png"  # database item 42
    result = search_json(
        capsys,
        f"index={logdir / 'index'}",
        f"query={query}",
        "k=88",
        "--grid",
        str(tmp_path / "grid.png"),
    )  # k = the whole database
    hits = result["queries"][0]["results"]
    assert hits[0]["distance"] == 0
    assert str(query) in [h["id"] for h in hits if h["distance"] == 0]
    assert all(h["id"] == database[h["index"]] for h in hits)
    with Image.open(tmp_path / "grid.png") as grid:
        cell = np.asarray(grid.convert("RGB"))[4 + 48, 4 + 100 + 48]  # centre of result 1
    assert tuple(cell) != (200, 200, 200)  # a database image, not the missing-image placeholder
