"""faiss binary indexes over packed codes (utils/code_index.py), on synthetic codes.

Oracles: the retrieval engine's distances (utils.retrieval.hamming_distance on real-valued
codes, (K - <b_q, b_g>) / 2) and a brute-force ranking by (distance, database index).
"""

import json
import os

import numpy as np
import pytest
import torch

faiss = pytest.importorskip("faiss", reason="faiss-cpu is not installed (requirements.txt)")

from utils.code_index import (  # noqa: E402
    FILES,
    build_index,
    check_k,
    faiss_dim,
    index_params,
    load_index_dir,
    pack,
    popcount_distances,
    search_index,
    write_index_dir,
)
from utils.errors import ConfigError, DataError  # noqa: E402
from utils.retrieval import binarize, hamming_distance, pack_codes  # noqa: E402


def real_codes(n, nbit, seed, levels=None):
    """Real-valued codes with exact zeros (which binarise to +1) and, with ``levels``, few
    distinct codes (many ties)."""
    g = torch.Generator().manual_seed(seed)
    if levels is None:
        u = torch.randn((n, nbit), generator=g)
        u[torch.rand((n, nbit), generator=g) < 0.05] = 0.0
        return u
    protos = torch.randn((levels, nbit), generator=g)
    return protos[torch.randint(0, levels, (n,), generator=g)]


def engine_ranking(q, db, k):
    """Top-k (distances, indices) by (engine distance, database index)."""
    dist = hamming_distance(q, db).numpy()
    idx = np.broadcast_to(np.arange(dist.shape[1]), dist.shape)
    order = np.lexsort((idx, dist), axis=1)[:, :k]
    return np.take_along_axis(dist, order, 1), order


@pytest.mark.parametrize("nbit", [8, 12, 16, 64, 100])
def test_pack_matches_engine_packing_and_distances(nbit):
    u = real_codes(50, nbit, seed=nbit)
    packed = pack(u)
    assert packed.dtype == np.uint8 and packed.shape == (50, faiss_dim(nbit) // 8)
    # +1 -> bit 1, most significant bit first, zero padding: the engine's pack_codes layout
    np.testing.assert_array_equal(packed, pack_codes(u).numpy())
    np.testing.assert_array_equal(packed, np.packbits((u >= 0).numpy(), axis=1))
    # Hamming distance of packed codes = (K - <b_q, b_g>) / 2 of the engine
    b = binarize(u)
    expected = ((nbit - b @ b.T) / 2).round().int().numpy()
    np.testing.assert_array_equal(popcount_distances(packed, packed), expected)
    np.testing.assert_array_equal(popcount_distances(packed, packed), hamming_distance(u, u))


def test_pack_hand_computed():
    u = torch.tensor([[0.0, -1.0, 2.0, -0.5, 0.1, 0.0, -3.0, 1.0, -1.0, 5.0]])
    # bits: 1 0 1 0 1 1 0 1 | 0 1 (padding 000000)
    np.testing.assert_array_equal(pack(u), [[0b10101101, 0b01000000]])


@pytest.mark.parametrize("nbit,levels", [(8, None), (12, None), (16, 40), (64, 300)])
@pytest.mark.parametrize("k", [1, 10, 257])
def test_flat_index_ranking_equals_engine_including_ties(nbit, levels, k):
    db = real_codes(3000, nbit, seed=1, levels=levels)
    q = real_codes(40, nbit, seed=2, levels=levels)
    index = build_index(pack(db), nbit, index_params("flat", 3000))
    D, I = search_index(index, pack(q), k)
    D_ref, I_ref = engine_ranking(q, db, k)
    # distances (hence their multiset) and the ids: faiss orders ties by database index
    np.testing.assert_array_equal(D, D_ref)
    np.testing.assert_array_equal(I, I_ref)
    # raw faiss output already has that order (search_index's re-sort is a no-op here), on
    # its heap path and on its counting path
    for use_heap in (True, False):
        index.use_heap = use_heap
        D_raw, I_raw = index.search(pack(q), k)
        np.testing.assert_array_equal(I_raw, I_ref)
    # the case must hold tie groups that straddle the cut-off (their order decides the ids)
    dist = hamming_distance(q, db).numpy()
    assert ((dist == D_ref[:, -1:]).sum(1) > (D_ref == D_ref[:, -1:]).sum(1)).any()


def test_ivf_with_every_list_probed_is_exact_on_distances():
    nbit, k = 16, 50
    db = real_codes(4000, nbit, seed=3, levels=60)
    q = real_codes(30, nbit, seed=4, levels=60)
    params = index_params("ivf", 4000, nlist=16, nprobe=16)
    index = build_index(pack(db), nbit, params)
    D, I = search_index(index, pack(q), k)
    D_ref, _ = engine_ranking(q, db, k)
    np.testing.assert_array_equal(D, D_ref)  # the top-k distance multiset of the engine
    # every returned id is at the distance reported, and no id twice
    true = hamming_distance(q, db).numpy()
    np.testing.assert_array_equal(np.take_along_axis(true, I, 1), D)
    assert all(len(set(row)) == k for row in I)


def clustered(n, nbit, n_clusters, seed):
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 256, (n_clusters, nbit // 8), dtype=np.uint8)
    mask = (
        rng.integers(0, 256, (n, nbit // 8), dtype=np.uint8)
        & rng.integers(0, 256, (n, nbit // 8), dtype=np.uint8)
        & rng.integers(0, 256, (n, nbit // 8), dtype=np.uint8)
    )
    return protos[rng.integers(0, n_clusters, n)] ^ mask


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_never_beat_exact_and_recall_high(kind):
    nbit, k, n = 64, 10, 20_000
    db = clustered(n, nbit, 20, seed=5)
    q = clustered(200, nbit, 20, seed=5)[::-1].copy()
    exact = build_index(db, nbit, index_params("flat", n))
    D_ref, _ = search_index(exact, q, k)
    params = index_params(kind, n, nlist=32, nprobe=8) if kind == "ivf" else index_params(kind, n)
    index = build_index(db, nbit, params)
    D, I = search_index(index, q, k)
    assert (I >= 0).all()
    true = popcount_distances(q, db)
    np.testing.assert_array_equal(np.take_along_axis(true, I, 1), D)  # true distances
    assert (D >= D_ref).all()  # an approximate search can only miss
    assert (np.diff(D, axis=1) >= 0).all()
    assert np.mean(D[:, -1] == D_ref[:, -1]) >= 0.95


def test_search_index_sorts_missing_results_last():
    nbit = 64
    db = clustered(2000, nbit, 10, seed=6)
    index = build_index(db, nbit, index_params("ivf", 2000, nlist=32, nprobe=1))
    D, I = search_index(index, db[:5], 500)  # one list holds far fewer than 500 codes
    assert (I == -1).any()
    for d, i in zip(D, I):
        found = i >= 0
        assert found[: found.sum()].all()  # found results first
        assert (d[~found] == np.iinfo(np.int32).max).all()
        assert (np.diff(d[found]) >= 0).all()


def test_index_params_defaults_and_errors():
    assert index_params("flat", 100) == {"index_type": "flat"}
    assert index_params("ivf", 1_000_000) == {"index_type": "ivf", "nlist": 4096, "nprobe": 16}
    assert index_params("ivf", 10_000_000)["nlist"] == 16384  # 4 sqrt = 12,649 -> 2**14
    assert index_params("ivf", 1000) == {"index_type": "ivf", "nlist": 25, "nprobe": 16}
    assert index_params("ivf", 200) == {"index_type": "ivf", "nlist": 5, "nprobe": 5}
    assert index_params("ivf", 10)["nlist"] == 1
    assert index_params("hnsw", 50) == {
        "index_type": "hnsw",
        "M": 32,
        "efConstruction": 40,
        "efSearch": 128,
    }
    assert index_params("hnsw", 50, ef_search=7)["efSearch"] == 7
    with pytest.raises(ConfigError, match="index_type must be one of flat, ivf, hnsw"):
        index_params("lsh", 10)
    with pytest.raises(ConfigError, match="nprobe applies to index_type=ivf, not flat"):
        index_params("flat", 10, nprobe=3)
    with pytest.raises(ConfigError, match="efSearch applies to index_type=hnsw, not ivf"):
        index_params("ivf", 10, ef_search=3)
    with pytest.raises(ConfigError, match="nlist must be a positive integer"):
        index_params("ivf", 10, nlist=0)
    with pytest.raises(ConfigError, match="larger than the database"):
        index_params("ivf", 10, nlist=11)


def test_check_k():
    assert check_k(5, 5) == 5
    for bad, match in (
        (0, "k must be >= 1"),
        (-3, "k must be >= 1"),
        (6, "k=6 is larger than the database \\(5 codes\\)"),
        (True, "positive integer"),
        (2.0, "positive integer"),
    ):
        with pytest.raises(ConfigError, match=match):
            check_k(bad, 5)


def write_small(path, nbit=16, n=100, kind="flat"):
    codes = real_codes(n, nbit, seed=7)
    packed = pack(codes)
    params = index_params(kind, n)
    index = build_index(packed, nbit, params)
    manifest = {"format_version": 1, "nbit": nbit, "params": params, "id_kind": "index"}
    return write_index_dir(path, packed, np.arange(n), np.arange(n) % 3, index, manifest), packed


def test_index_folder_round_trip_and_whole_replacement(tmp_path):
    target, packed = write_small(tmp_path / "index")
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES.values())
    (target / "stray.txt").write_text("left from before")
    (tmp_path / ".index.tmp99999999").mkdir()  # a killed export's leftover (no such process)
    (tmp_path / f".index.tmp{os.getppid()}").mkdir()  # a running export's folder: kept
    target, packed = write_small(tmp_path / "index", nbit=24, n=60, kind="ivf")
    assert not (target / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".index.tmp{os.getppid()}", "index"]
    store = load_index_dir(target)
    assert store.nbit == 24 and len(store) == 60 and store.manifest["index_type"] == "ivf"
    np.testing.assert_array_equal(store.codes, packed)
    assert store.index.nprobe == store.manifest["params"]["nprobe"]
    D, I = search_index(store.index, packed[:3], 1)
    np.testing.assert_array_equal(D[:, 0], 0)


def test_damaged_index_folders_are_one_sentence(tmp_path):
    with pytest.raises(DataError, match="does not exist: export one with"):
        load_index_dir(tmp_path / "nothing")
    target, _ = write_small(tmp_path / "index")
    (target / FILES["ids"]).unlink()
    with pytest.raises(DataError, match="lacks ids.npy"):
        load_index_dir(target)
    target, _ = write_small(tmp_path / "index")
    data = (target / FILES["index"]).read_bytes()
    (target / FILES["index"]).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="is damaged .*export it again"):
        load_index_dir(target)
    target, _ = write_small(tmp_path / "index")
    manifest = json.loads((target / FILES["manifest"]).read_text())
    manifest["nbit"] = 32
    (target / FILES["manifest"]).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="is inconsistent"):
        load_index_dir(target)
