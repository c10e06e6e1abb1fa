"""utils/diagnostics.py against brute force, hand-computed values and the retrieval engine."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from utils import diagnostics as dg
from utils.retrieval import retrieval_report


def _random_case(seed, n_q=13, n_db=29, nbit=8, classes=3, multilabel=False):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n_q, nbit)).astype(np.float32)
    g = rng.normal(size=(n_db, nbit)).astype(np.float32)
    g[:3] = q[:3]  # some exact matches (distance 0)
    g[5, :] = 0.0  # exact zeros binarise to +1
    if multilabel:
        ql = (rng.random((n_q, classes)) < 0.4).astype(np.float32)
        dl = (rng.random((n_db, classes)) < 0.4).astype(np.float32)
    else:
        ql, dl = rng.integers(0, classes, n_q), rng.integers(0, classes, n_db)
    return q, g, ql, dl


def _sign(v):
    return np.where(np.asarray(v) >= 0, 1, -1)


def _brute_relevant(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return bool(a == b) if a.ndim == 0 else bool(np.any((a > 0) & (b > 0)))


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_pair_histograms_equal_a_double_loop(seed, multilabel, monkeypatch):
    monkeypatch.setattr(dg, "_PAIR_BLOCK", 4)  # several query blocks
    q, g, ql, dl = _random_case(seed, multilabel=multilabel)
    nbit = q.shape[1]
    same, diff = np.zeros(nbit + 1, int), np.zeros(nbit + 1, int)
    for i, j in itertools.product(range(len(q)), range(len(g))):
        d = int((_sign(q[i]) != _sign(g[j])).sum())
        (same if _brute_relevant(ql[i], dl[j]) else diff)[d] += 1
    got_same, got_diff = dg.pair_distance_histograms(q, g, ql, dl)
    np.testing.assert_array_equal(got_same, same)
    np.testing.assert_array_equal(got_diff, diff)
    assert got_same.sum() + got_diff.sum() == len(q) * len(g)


def test_pair_histograms_agree_with_the_engine_histograms():
    """Relevant pairs within radius r, summed over queries, from the engine's per-query recall
    within r (R_radius@r times the query's relevant items) = the cumulative same-class counts."""
    q, g, ql, dl = _random_case(3)
    same, _ = dg.pair_distance_histograms(q, g, ql, dl)
    total_rel = np.array([(dl == c).sum() for c in ql])
    for r in range(q.shape[1] + 1):
        rows = [
            retrieval_report(
                q[i : i + 1], g, ql[i : i + 1], dl, R=1, ks=(1,), radius=r, pr_curve=False
            )[f"R_radius@{r}"]
            for i in range(len(q))
        ]
        assert round(float(np.dot(rows, total_rel))) == same[: r + 1].sum()


def test_overlap_and_means_by_hand():
    assert dg.histogram_overlap(np.array([2, 2, 0]), np.array([0, 2, 2])) == pytest.approx(0.5)
    assert dg.histogram_overlap(np.array([1, 0]), np.array([0, 7])) == 0.0
    assert dg.histogram_overlap(np.array([3, 1]), np.array([6, 2])) == pytest.approx(1.0)
    assert dg.histogram_mean(np.array([1, 0, 3])) == pytest.approx(1.5)
    np.testing.assert_allclose(dg.normalise([1, 3]), [0.25, 0.75])


def test_code_statistics_by_hand():
    codes = torch.tensor(
        [
            [0.5, -0.2, 1.0, 0.0],
            [-0.5, -0.9, 1.0, 0.3],
            [0.5, 0.2, 1.0, -2.0],
            [0.5, -0.2, 1.0, 0.0],
        ]
    )
    np.testing.assert_allclose(dg.bit_balance(codes), [0.75, 0.25, 1.0, 0.75])
    # |v - sign v|: row 1: .5 .8 0 1; row 2: .5 .1 0 .7; row 3: .5 .8 0 1; row 4 = row 1
    assert dg.quantisation_gap(codes) == pytest.approx((2.3 * 2 + 1.3 + 2.3) / 16)
    assert dg.distinct_code_share(codes) == pytest.approx(3 / 4)
    stats = dg.code_statistics(codes)
    assert stats["constant_bits"] == 1.0
    assert stats["bit_balance_max_abs_dev"] == pytest.approx(0.5)
    assert stats["bit_balance_mean_abs_dev"] == pytest.approx((0.25 * 3 + 0.5) / 4)


def test_bit_correlation_against_numpy_and_extremes():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(50, 6))
    codes[:, 5] = 1.0  # constant bit: left out
    b = _sign(codes)[:, :5].astype(float)
    corr = np.corrcoef(b, rowvar=False)
    expected = np.mean([abs(corr[i, j]) for i in range(5) for j in range(i + 1, 5)])
    assert dg.mean_abs_bit_correlation(codes) == pytest.approx(expected)
    hadamard = np.array([[1, 1, 1], [1, -1, 1], [1, 1, -1], [1, -1, -1]])[:, 1:]
    assert dg.mean_abs_bit_correlation(hadamard) == pytest.approx(0.0)  # orthogonal bits
    dup = np.stack([codes[:, 0], codes[:, 0], -codes[:, 0] - 1e-9], 1)
    assert dg.mean_abs_bit_correlation(dup) == pytest.approx(1.0)  # redundant bits
    assert np.isnan(dg.mean_abs_bit_correlation(np.ones((4, 3))))


@pytest.mark.parametrize("multilabel", [False, True])
def test_pr_points_are_the_engine_radius_metrics(multilabel):
    q, g, ql, dl = _random_case(5, multilabel=multilabel)
    nbit = q.shape[1]
    curve = dg.pr_curve_points(q, g, ql, dl)
    report = retrieval_report(q, g, ql, dl, R=5, ks=(1,), radius=list(range(nbit + 1)))
    assert curve["radius"] == list(range(nbit + 1))
    assert curve["precision"] == [report[f"P_radius@{r}"] for r in range(nbit + 1)]
    assert curve["recall"] == [report[f"R_radius@{r}"] for r in range(nbit + 1)]
    assert curve["recall"][-1] == pytest.approx(1.0 if not multilabel else curve["recall"][-1])


def test_precision_at_k_by_brute_force_ranking():
    q, g, ql, dl = _random_case(7)
    points = dg.precision_at_k_points(q, g, ql, dl, ks=[1, 3, 10, 500])
    assert points["k"] == [1, 3, 10, len(g)]  # clipped to the database size
    for k, p in zip(points["k"], points["precision"]):
        hits = []
        for i in range(len(q)):
            d = [(int((_sign(q[i]) != _sign(g[j])).sum()), j) for j in range(len(g))]
            top = [j for _, j in sorted(d)[:k]]
            hits.append(np.mean([dl[j] == ql[i] for j in top]))
        assert p == pytest.approx(np.mean(hits))


@pytest.mark.parametrize("multilabel", [False, True])
def test_grid_rows_follow_the_engine_ranking(multilabel):
    q, g, ql, dl = _random_case(11, multilabel=multilabel)
    queries = dg.pick_grid_queries(ql, 4, seed=0)
    rows = dg.retrieval_grid_rows(q, g, ql, dl, queries, top=10)
    assert [r["query"] for r in rows] == list(queries)
    for row in rows:
        i = row["query"]
        # the engine's ranking: L(k) (relevant items in the top k) for k = 1..10
        report = retrieval_report(
            q[i : i + 1], g, ql[i : i + 1], dl, R=1, ks=range(1, 11), radius=0, pr_curve=False
        )
        L = np.cumsum(row["correct"])
        np.testing.assert_allclose(L / np.arange(1, 11), [report[f"P@{k}"] for k in range(1, 11)])
        # and the brute-force (distance, index) order itself
        d = [(int((_sign(q[i]) != _sign(g[j])).sum()), j) for j in range(len(g))]
        assert row["retrieved"] == [j for _, j in sorted(d)[:10]]
        assert row["distance"] == [dd for dd, _ in sorted(d)[:10]]
        assert row["correct"] == [_brute_relevant(ql[i], dl[j]) for j in row["retrieved"]]


def test_pick_grid_queries_one_per_class_and_fixed():
    labels = np.repeat(np.arange(5), 7)
    picked = dg.pick_grid_queries(labels, 3, seed=1)
    assert list(labels[picked]) == [0, 1, 2]
    np.testing.assert_array_equal(picked, dg.pick_grid_queries(labels, 3, seed=1))
    more = dg.pick_grid_queries(labels, 8, seed=1)  # 5 classes, then 3 random extra queries
    assert len(more) == 8 and len(set(more.tolist())) == 8
    assert sorted(set(labels[more[:5]].tolist())) == [0, 1, 2, 3, 4]
    multi = dg.pick_grid_queries(np.eye(3)[[0, 1, 2, 0, 1]], 4, seed=0)
    assert len(set(multi.tolist())) == 4


def test_training_curves_and_map_by_bits():
    train = [
        {"epoch": 1, "lr/0": 0.1, "train_loss": 2.0, "train_rec": 1.5},
        {"epoch": 2, "lr/0": 0.1, "train_loss": 1.0, "train_rec": 0.5},
    ]
    test = [{"epoch": 2, "mAP@10": 0.4, "mAP_tie@10": 0.41, "val_mAP@10": 0.5, "P@1": 0.3}]
    curves = dg.training_curves(train, test)
    assert curves["loss"] == {"loss": ([1, 2], [2.0, 1.0]), "rec": ([1, 2], [1.5, 0.5])}
    assert curves["map"] == {
        "mAP@10": ([2], [0.4]),
        "mAP_tie@10": ([2], [0.41]),
        "val_mAP@10": ([2], [0.5]),
    }
    rows = [{"method": "a", "nbit": 32, "seed": s, "map": m} for s, m in [(1, 0.2), (2, 0.4)]]
    rows += [{"method": "a", "nbit": 16, "seed": 1, "map": 0.1}]
    out = dg.map_by_bits(rows)
    assert out["a"]["nbit"] == [16, 32]
    assert out["a"]["mean"] == pytest.approx([0.1, 0.3])
    assert out["a"]["std"] == pytest.approx([0.0, np.std([0.2, 0.4], ddof=1)])
    assert out["a"]["seeds"] == [1, 2]


def test_sdc_calibration_pairs_are_what_the_loss_pulls_together():
    from models.loss.sdc import SDCLoss, calibration_targets

    torch.manual_seed(0)
    x, v = torch.randn(10, 5), torch.randn(10, 4)
    loss = SDCLoss(quan=0.0)
    sims, targets = loss.calibration_pairs(x, v)
    assert len(sims) == len(targets) == 5
    torch.testing.assert_close(targets, calibration_targets(5).float())
    # by hand: pair i with i + 5, order by feature cosine
    fs = torch.nn.functional.cosine_similarity(x[:5], x[5:], dim=1)
    cs = torch.nn.functional.cosine_similarity(v[:5], v[5:], dim=1)
    torch.testing.assert_close(sims, cs[torch.argsort(fs)])
    assert float(loss(x, v)["rec"]) == pytest.approx(float((sims - targets).abs().mean()))
