"""Tests for utils/retrieval/: hand-computed cases, a brute-force NumPy oracle, exhaustive
enumeration of tie orders, invariances, bad input, and CPU/CUDA agreement."""

import contextlib
import itertools
import json
import math
from fractions import Fraction as F
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from utils.code_index import popcount_distances
from utils.retrieval import (
    binarize,
    hamming_distance,
    mean_average_precision,
    numba_engine,
    pack_codes,
    retrieval_report,
    tie_aware,
    torch_engine,
    unpack_bits,
)
from utils.retrieval.torch_engine import sparse_nonzero

#: Engines checked against the oracle: the torch matmul/bincount engine (run here on the CPU)
#: and the numba CPU engine (numba is a requirement).
BACKENDS = ["torch", "numba"]

# --------------------------------------------------------------------------------------------
# Independent brute-force oracle: full distance matrix, stable argsort, plain loops.
# --------------------------------------------------------------------------------------------


def _sign(u):
    return np.where(np.asarray(u, dtype=np.float64) >= 0, 1, -1).astype(np.int64)


def _relevance(ql, dl):
    ql, dl = np.asarray(ql), np.asarray(dl)
    if ql.ndim == 1:
        return ql[:, None] == dl[None, :]
    return (ql.astype(np.int64) @ dl.astype(np.int64).T) > 0


def _clip(R, n):
    return n if (R == -1 or R > n) else R


def _ap_of_sequence(rel, R):
    """AP@R of a ranked relevance sequence, with a plain loop."""
    hits, total = 0, 0.0
    for k in range(1, R + 1):
        if rel[k - 1]:
            hits += 1
            total += hits / k
    return total / hits if hits else 0.0


def oracle(q_codes, d_codes, ql, dl, Rs=(-1,), ks=(), radii=(), zero_relevant="count"):
    qb, db = _sign(q_codes), _sign(d_codes)
    nbit, n_db = qb.shape[1], db.shape[0]
    dist = (nbit - qb @ db.T) // 2
    relm = _relevance(ql, dl)
    out = {}
    for R in Rs:
        Rc = _clip(R, n_db)
        aps, keep = [], []
        for i in range(len(qb)):
            order = np.argsort(dist[i], kind="stable")
            rel = relm[i][order]
            aps.append(_ap_of_sequence(rel, Rc))
            keep.append(rel[:Rc].any())
        aps = np.array(aps)
        if zero_relevant == "skip":
            aps = aps[np.array(keep)]
        out[("mAP", R)] = float(aps.mean()) if aps.size else 0.0
        sizes = []
        for i in range(len(qb)):
            d_at_R = np.sort(dist[i], kind="stable")[Rc - 1]
            sizes.append((dist[i] == d_at_R).sum())
        out[("tie", R)] = float(np.mean(sizes))
    for k in ks:
        kc = min(k, n_db)
        P, Rec, Hit = [], [], []
        for i in range(len(qb)):
            order = np.argsort(dist[i], kind="stable")
            L = relm[i][order][:kc].sum()
            tot = relm[i].sum()
            P.append(L / kc)
            Rec.append(L / tot if tot else 0.0)
            Hit.append(1.0 if L > 0 else 0.0)
        out[("P", k)], out[("Recall", k)], out[("Hit", k)] = map(np.mean, (P, Rec, Hit))
    prec_curve, rec_curve = [], []
    for r in range(nbit + 1):
        P, Rec = [], []
        for i in range(len(qb)):
            inside = dist[i] <= r
            n_in, rel_in, tot = inside.sum(), (inside & relm[i]).sum(), relm[i].sum()
            P.append(rel_in / n_in if n_in else 0.0)
            Rec.append(rel_in / tot if tot else 0.0)
        prec_curve.append(np.mean(P))
        rec_curve.append(np.mean(Rec))
    out["pr"] = (prec_curve, rec_curve)
    for r in radii:
        out[("Prad", r)] = prec_curve[min(r, nbit)]
        out[("Rrad", r)] = rec_curve[min(r, nbit)]
    out["distinct"] = float(np.mean([len(np.unique(row)) for row in dist]))
    return out


def tie_oracle(q_codes, d_codes, ql, dl, R, zero_relevant="count"):
    """Expected AP@R over all orders inside equal-distance groups, by exhaustive enumeration."""
    qb, db = _sign(q_codes), _sign(d_codes)
    nbit, n_db = qb.shape[1], db.shape[0]
    dist = (nbit - qb @ db.T) // 2
    relm = _relevance(ql, dl)
    Rc = _clip(R, n_db)
    aps = []
    for i in range(len(qb)):
        groups = [relm[i][dist[i] == d] for d in range(nbit + 1)]
        groups = [tuple(g) for g in groups if len(g)]
        # Distinct arrangements of a group's relevance pattern are equally likely.
        arrangements = [sorted(set(itertools.permutations(g))) for g in groups]
        values, any_hit = [], False
        for combo in itertools.product(*arrangements):
            seq = [x for g in combo for x in g]
            values.append(_ap_of_sequence(seq, Rc))
            any_hit |= any(seq[:Rc])
        if zero_relevant == "skip" and not any_hit:
            continue
        aps.append(np.mean(values))
    return float(np.mean(aps)) if aps else 0.0


# --------------------------------------------------------------------------------------------
# Hand-computed cases (fractions written out per query)
# --------------------------------------------------------------------------------------------


def test_methods_worked_example():
    # methods.md §6.2: relevance 1,0,1,1,0 at R=5: precisions 1, 1/2, 2/3, 3/4, 3/5,
    # AP = (1 + 2/3 + 3/4) / 3 = 29/36 = 0.8056.
    q = np.array([[1, 1, 1, 1]])
    db = np.array([[1, 1, 1, 1], [-1, 1, 1, 1], [-1, -1, 1, 1], [-1, -1, -1, 1], [-1, -1, -1, -1]])
    ql, dl = np.array([0]), np.array([0, 1, 0, 0, 1])  # distances 0..4 -> relevance 1,0,1,1,0
    got = mean_average_precision(q, db, ql, dl, R=5)
    assert got == pytest.approx(float(F(29, 36)), abs=1e-12)
    assert round(got, 4) == 0.8056


def test_hamming_example():
    # methods.md: K=4, (+,+,-,-) vs (+,-,-,+) -> d = (4 - 0) / 2 = 2.
    a = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    b = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    assert hamming_distance(a, b).item() == 2
    # the packed form, as the search computes it (utils/code_index.py)
    assert popcount_distances(pack_codes(a).numpy(), pack_codes(b).numpy()).item() == 2


# Single-label, nbit = 3.
#   q0 = (+,+,+) class 0,  q1 = (-,-,-) class 1
#   db: idx code     class  d(q0) d(q1)
#        0  (+,+,+)   1      0     3
#        1  (+,+,-)   0      1     2
#        2  (+,-,-)   0      2     1
#        3  (-,-,-)   1      3     0
#        4  (+,+,+)   0      0     3
#   q0 ranking (d, idx): 0,4 | 1 | 2 | 3  -> relevance 0,1,1,1,0  (3 relevant in db)
#   q1 ranking         : 3 | 2 | 1 | 0,4  -> relevance 1,0,0,1,0  (2 relevant in db)
SL_Q = np.array([[1, 1, 1], [-1, -1, -1]], dtype=np.float32)
SL_DB = np.array([[1, 1, 1], [1, 1, -1], [1, -1, -1], [-1, -1, -1], [1, 1, 1]], dtype=np.float32)
SL_QL = np.array([0, 1])
SL_DL = np.array([1, 0, 0, 1, 0])


def test_single_label_hand():
    # R = all: q0 AP = (1/2 + 2/3 + 3/4) / 3 = 23/36;  q1 AP = (1/1 + 2/4) / 2 = 3/4.
    exp = (F(23, 36) + F(3, 4)) / 2
    assert mean_average_precision(SL_Q, SL_DB, SL_QL, SL_DL, R=-1) == pytest.approx(float(exp))
    assert mean_average_precision(SL_Q, SL_DB, SL_QL, SL_DL, R=99) == pytest.approx(float(exp))
    # R = 2: q0 relevance 0,1 -> (1/2) / 1 = 1/2;  q1 relevance 1,0 -> 1.
    assert mean_average_precision(SL_Q, SL_DB, SL_QL, SL_DL, R=2) == pytest.approx(0.75)


def test_no_relevant_in_top_R_both_modes():
    # R = 1: q0's first item (idx 0, class 1) is not relevant -> AP 0; q1's (idx 3) is -> 1.
    assert mean_average_precision(SL_Q, SL_DB, SL_QL, SL_DL, R=1) == pytest.approx(0.5)
    assert mean_average_precision(
        SL_Q, SL_DB, SL_QL, SL_DL, R=1, zero_relevant="skip"
    ) == pytest.approx(1.0)
    # Only q0: everything skipped -> 0.0.
    only_q0 = mean_average_precision(SL_Q[:1], SL_DB, SL_QL[:1], SL_DL, R=1, zero_relevant="skip")
    assert only_q0 == 0.0


def test_single_label_tie_aware_hand():
    # R = 1, tie-aware: q0's group d=0 = {idx0 (not rel), idx4 (rel)} straddles R: m = 1,
    #   X ~ Bernoulli(1/2) -> E[AP] = 1/2.  q1: group d=0 = {idx3 (rel)} -> 1.
    got = mean_average_precision(SL_Q, SL_DB, SL_QL, SL_DL, R=1, ties="average")
    assert got == pytest.approx(0.75, abs=1e-12)
    # R = all: q0 orders of group 0: (rel,not) -> 1,0,1,1,0 = 29/36; (not,rel) -> 23/36;
    #   mean 26/36 = 13/18. q1 group d=3 = {idx0 rel, idx4 not} at ranks 4,5:
    #   1,0,0,1,0 -> 3/4; 1,0,0,0,1 -> (1 + 2/5)/2 = 7/10; mean 29/40.
    exp = (F(13, 18) + F(29, 40)) / 2  # = 521/720
    got = mean_average_precision(SL_Q, SL_DB, SL_QL, SL_DL, R=-1, ties="average")
    assert got == pytest.approx(float(exp), abs=1e-12)


def test_single_label_report_hand():
    rep = retrieval_report(SL_Q, SL_DB, SL_QL, SL_DL, R=[1, -1], ks=(1, 5, 7), radius=[0, 1])
    assert rep["mAP@1"] == pytest.approx(0.5)
    assert rep["mAP@all"] == pytest.approx(float((F(23, 36) + F(3, 4)) / 2))
    assert rep["mAP_tie@1"] == pytest.approx(0.75)
    # Group containing rank 1: q0 -> d=0 (2 items), q1 -> d=0 (1 item).
    assert rep["tie_group_size@1"] == pytest.approx(1.5)
    # Rank 5 (= all): q0 -> d=3 (1 item), q1 -> d=3 (2 items).
    assert rep["tie_group_size@all"] == pytest.approx(1.5)
    # Distinct distances: q0 {0,1,2,3}, q1 {0,1,2,3}.
    assert rep["distinct_distances"] == 4.0
    # P@1 = (0 + 1)/2; Recall@1 = (0/3 + 1/2)/2; HitRate@1 = (0 + 1)/2.
    assert rep["P@1"] == pytest.approx(0.5)
    assert rep["Recall@1"] == pytest.approx(0.25)
    assert rep["HitRate@1"] == pytest.approx(0.5)
    # P@5 = (3/5 + 2/5)/2; Recall@5 = 1; k = 7 > n_db is clipped to 5 (key keeps 7).
    assert rep["P@5"] == pytest.approx(0.5)
    assert rep["Recall@5"] == pytest.approx(1.0)
    assert rep["P@7"] == pytest.approx(0.5)
    assert rep["HitRate@7"] == 1.0
    # Radius 0: q0 {idx0, idx4}: P 1/2, R 1/3; q1 {idx3}: P 1, R 1/2.
    assert rep["P_radius@0"] == pytest.approx(0.75)
    assert rep["R_radius@0"] == pytest.approx(float((F(1, 3) + F(1, 2)) / 2))
    # Radius 1: q0 {0,4,1}: P 2/3, R 2/3; q1 {3,2}: P 1/2, R 1/2.
    assert rep["P_radius@1"] == pytest.approx(float((F(2, 3) + F(1, 2)) / 2))
    assert rep["R_radius@1"] == pytest.approx(float((F(2, 3) + F(1, 2)) / 2))
    assert rep["pr_curve"]["radius"] == [0, 1, 2, 3]
    assert rep["pr_curve"]["recall"][-1] == pytest.approx(1.0)
    # At radius nbit everything is retrieved: precision = 3/5 and 2/5.
    assert rep["pr_curve"]["precision"][-1] == pytest.approx(0.5)
    assert (rep["num_queries"], rep["num_db"], rep["nbit"]) == (2.0, 5.0, 3.0)


# Multi-label, nbit = 2, 3 labels.
#   q0 = (+,+) [1,0,0];  q1 = (-,+) [0,1,1];  q2 = (+,-) [0,0,0] (no label: nothing relevant)
#   db: idx code   labels   d(q0) d(q1)  rel(q0) rel(q1)
#        0  (+,+)  [1,1,0]   0     1      yes     yes
#        1  (-,+)  [0,0,1]   1     0      no      yes
#        2  (+,-)  [1,0,0]   1     2      yes     no
#        3  (-,-)  [0,1,0]   2     1      no      yes
#   q0 ranking 0 | 1,2 | 3 -> 1,0,1,0: AP = (1 + 2/3)/2 = 5/6
#   q1 ranking 1 | 0,3 | 2 -> 1,1,1,0: AP = 1
#   q2: AP = 0 (count) or skipped.
ML_Q = np.array([[1, 1], [-1, 1], [1, -1]], dtype=np.float32)
ML_DB = np.array([[1, 1], [-1, 1], [1, -1], [-1, -1]], dtype=np.float32)
ML_QL = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
ML_DL = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]])


def test_multi_label_hand():
    count = mean_average_precision(ML_Q, ML_DB, ML_QL, ML_DL, R=-1)
    assert count == pytest.approx(float((F(5, 6) + 1 + 0) / 3))  # 11/18
    skip = mean_average_precision(ML_Q, ML_DB, ML_QL, ML_DL, R=-1, zero_relevant="skip")
    assert skip == pytest.approx(float((F(5, 6) + 1) / 2))  # 11/12
    # Tie-aware, R = all: q0's group d=1 = {idx1 no, idx2 yes} at ranks 2,3:
    #   1,0,1,0 -> 5/6 or 1,1,0,0 -> 1: mean 11/12. q1: groups hold only relevant items in
    #   front, so 1. q2: 0 (count) / skipped (nothing relevant anywhere).
    tie = mean_average_precision(ML_Q, ML_DB, ML_QL, ML_DL, R=-1, ties="average")
    assert tie == pytest.approx(float((F(11, 12) + 1) / 3), abs=1e-12)
    tie_skip = mean_average_precision(
        ML_Q, ML_DB, ML_QL, ML_DL, R=-1, ties="average", zero_relevant="skip"
    )
    assert tie_skip == pytest.approx(float((F(11, 12) + 1) / 2), abs=1e-12)
    # Recall@k of q2 (no relevant item in the db) contributes 0:
    # Recall@2: q0 1/2, q1 2/3, q2 0.
    rep = retrieval_report(ML_Q, ML_DB, ML_QL, ML_DL, R=2, ks=(2,))
    assert rep["Recall@2"] == pytest.approx(float((F(1, 2) + F(2, 3)) / 3))


# Tie group straddling R, nbit = 1.
#   query (+), class 0; db codes +,+,+,+,-,-  classes 1,0,1,0,0,1
#   group d=0: idx 0..3, relevance 0,1,0,1 (n=4, r=2);  group d=1: idx 4,5, relevance 1,0.
TIE_Q = np.array([[1.0]])
TIE_DB = np.array([[1.0], [1.0], [1.0], [1.0], [-1.0], [-1.0]])
TIE_QL = np.array([0])
TIE_DL = np.array([1, 0, 1, 0, 0, 1])


def test_R_cuts_through_tie_group():
    # Index order, R=2: relevance 0,1 -> AP = (1/2)/1 = 1/2.  R=3: 0,1,0 -> 1/2.
    assert mean_average_precision(TIE_Q, TIE_DB, TIE_QL, TIE_DL, R=2) == pytest.approx(0.5)
    assert mean_average_precision(TIE_Q, TIE_DB, TIE_QL, TIE_DL, R=3) == pytest.approx(0.5)
    # Tie-aware, R=2: m=2 of the group (n=4, r=2): P(X=0)=1/6, P(X=1)=4/6, P(X=2)=1/6.
    #   X=1: relevant at rank 1 or 2 -> AP 1 or 1/2, mean 3/4;  X=2: AP 1.
    #   E = 4/6 * 3/4 + 1/6 * 1 = 2/3.
    got = mean_average_precision(TIE_Q, TIE_DB, TIE_QL, TIE_DL, R=2, ties="average")
    assert got == pytest.approx(float(F(2, 3)), abs=1e-12)
    # Tie-aware, R=3: P(X=1) = P(X=2) = 1/2.
    #   X=1: rank 1, 2 or 3 -> 1, 1/2, 1/3: mean 11/18.
    #   X=2: ranks {1,2}: 1; {1,3}: (1 + 2/3)/2 = 5/6; {2,3}: (1/2 + 2/3)/2 = 7/12: mean 29/36.
    #   E = (11/18 + 29/36)/2 = 17/24.
    got = mean_average_precision(TIE_Q, TIE_DB, TIE_QL, TIE_DL, R=3, ties="average")
    assert got == pytest.approx(float(F(17, 24)), abs=1e-12)
    rep = retrieval_report(TIE_Q, TIE_DB, TIE_QL, TIE_DL, R=[2, 5], ks=(1,), radius=0)
    assert rep["tie_group_size@2"] == 4.0
    assert rep["tie_group_size@5"] == 2.0
    assert rep["distinct_distances"] == 2.0
    for R in (2, 3, 5, -1):
        assert mean_average_precision(
            TIE_Q, TIE_DB, TIE_QL, TIE_DL, R=R, ties="average"
        ) == pytest.approx(tie_oracle(TIE_Q, TIE_DB, TIE_QL, TIE_DL, R), abs=1e-12)


def test_radius_precision_is_zero_when_nothing_within_radius():
    # Query (+,+,+,+) vs db items at distance >= 2: nothing within radius 1 -> precision 0.
    q = np.ones((1, 4))
    db = np.array([[-1, -1, 1, 1], [-1, -1, -1, 1]])
    rep = retrieval_report(q, db, np.array([0]), np.array([0, 0]), R=1, ks=(1,), radius=[1, 2, 9])
    assert rep["P_radius@1"] == 0.0 and rep["R_radius@1"] == 0.0
    assert rep["P_radius@2"] == 1.0 and rep["R_radius@2"] == 0.5
    assert rep["P_radius@9"] == 1.0 and rep["R_radius@9"] == 1.0  # radius > nbit: everything


# --------------------------------------------------------------------------------------------
# Property tests against the oracle
# --------------------------------------------------------------------------------------------


@st.composite
def problems(draw, max_q=10, max_db=40, bits=(1, 2, 3, 7, 8, 24, 65)):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    nbit = draw(st.sampled_from(bits))
    n_q = draw(st.integers(1, max_q))
    n_db = draw(st.integers(1, max_db))
    # Codes: ±1, real-valued with exact zeros, or few distinct codes (heavy ties).
    kind = draw(st.sampled_from(["pm1", "real", "dup"]))
    if kind == "pm1":
        q = rng.choice([-1.0, 1.0], (n_q, nbit))
        d = rng.choice([-1.0, 1.0], (n_db, nbit))
    elif kind == "real":
        q = rng.normal(size=(n_q, nbit)) * (rng.random((n_q, nbit)) > 0.1)
        d = rng.normal(size=(n_db, nbit)) * (rng.random((n_db, nbit)) > 0.1)
    else:
        pool = rng.choice([-1.0, 1.0], (3, nbit))
        q = pool[rng.integers(0, 3, n_q)]
        d = pool[rng.integers(0, 3, n_db)]
    if draw(st.booleans()):
        n_cls = draw(st.integers(1, 6))
        ql, dl = rng.integers(-2, n_cls, n_q), rng.integers(-2, n_cls, n_db)
    else:
        n_lab = draw(st.integers(1, 5))
        p = draw(st.sampled_from([0.1, 0.3, 0.6]))
        ql = (rng.random((n_q, n_lab)) < p).astype(np.int64)
        dl = (rng.random((n_db, n_lab)) < p).astype(np.int64)
    Rs = draw(
        st.lists(st.sampled_from([-1, 1, 2, 3, 5, 10, 17, 50]), min_size=1, max_size=3, unique=True)
    )
    ks = draw(st.lists(st.integers(1, 60), min_size=0, max_size=4, unique=True))
    radii = draw(st.lists(st.integers(0, 70), min_size=1, max_size=3, unique=True))
    return q.astype(np.float32), d.astype(np.float32), ql, dl, Rs, ks, radii


@st.composite
def engine_settings(draw):
    """Chunk size, tiny row blocks, and the explicit-relevance path."""
    return dict(
        chunk=draw(st.sampled_from([None, 1, 2, 3, 7])),
        row_block=draw(st.sampled_from([None, 1, 2])),
        explicit=draw(st.booleans()),
    )


def _patched(cfg):
    patches = []
    if cfg["row_block"] is not None:
        patches.append(mock.patch.object(tie_aware, "ROW_BLOCK", cfg["row_block"]))
    if cfg["explicit"]:
        patches.append(mock.patch.object(torch_engine, "_MAX_BINS_PER_QUERY", 0))
    stack = contextlib.ExitStack()
    for p in patches:
        stack.enter_context(p)
    return stack


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.parametrize("backend", BACKENDS)
@given(problems(), engine_settings(), st.sampled_from(["count", "skip"]))
def test_report_matches_oracle(backend, prob, cfg, zero_relevant):
    q, d, ql, dl, Rs, ks, radii = prob
    with _patched(cfg):
        rep = retrieval_report(
            q,
            d,
            ql,
            dl,
            R=Rs,
            ks=ks,
            radius=radii,
            zero_relevant=zero_relevant,
            chunk_size=cfg["chunk"],
            backend=backend,
        )
    exp = oracle(q, d, ql, dl, Rs=Rs, ks=ks, radii=radii, zero_relevant=zero_relevant)
    for R in Rs:
        name = "all" if R == -1 else str(R)
        assert rep[f"mAP@{name}"] == pytest.approx(exp[("mAP", R)], abs=1e-9)
        assert rep[f"tie_group_size@{name}"] == pytest.approx(exp[("tie", R)], abs=1e-9)
    for k in ks:
        assert rep[f"P@{k}"] == pytest.approx(exp[("P", k)], abs=1e-9)
        assert rep[f"Recall@{k}"] == pytest.approx(exp[("Recall", k)], abs=1e-9)
        assert rep[f"HitRate@{k}"] == pytest.approx(exp[("Hit", k)], abs=1e-9)
    for r in radii:
        assert rep[f"P_radius@{r}"] == pytest.approx(exp[("Prad", r)], abs=1e-9)
        assert rep[f"R_radius@{r}"] == pytest.approx(exp[("Rrad", r)], abs=1e-9)
    np.testing.assert_allclose(rep["pr_curve"]["precision"], exp["pr"][0], atol=1e-9, rtol=0)
    np.testing.assert_allclose(rep["pr_curve"]["recall"], exp["pr"][1], atol=1e-9, rtol=0)
    assert rep["distinct_distances"] == pytest.approx(exp["distinct"], abs=1e-9)
    assert rep["nbit"] == q.shape[1] and rep["num_db"] == len(d) and rep["num_queries"] == len(q)


@settings(max_examples=80, deadline=None)
@pytest.mark.parametrize("backend", BACKENDS)
@given(problems(), engine_settings(), st.sampled_from(["count", "skip"]))
def test_map_matches_oracle(backend, prob, cfg, zero_relevant):
    q, d, ql, dl, Rs, _, _ = prob
    R = Rs[0]
    with _patched(cfg):
        got = mean_average_precision(
            q, d, ql, dl, R=R, zero_relevant=zero_relevant, chunk_size=cfg["chunk"], backend=backend
        )
    exp = oracle(q, d, ql, dl, Rs=[R], zero_relevant=zero_relevant)[("mAP", R)]
    assert got == pytest.approx(exp, abs=1e-9)


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("small_chunks", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_medium_case_matches_oracle(multilabel, small_chunks, backend):
    # 12 bits, 2,500 items: big tie groups; one or several chunks of queries.
    q, d, ql, dl = _medium(seed=21, n_q=37, n_db=2500, nbit=12, multilabel=multilabel)
    kw = dict(R=[1, 300, 2500, -1], ks=(1, 10, 299, 3000), radius=[0, 3, 12])
    rep = retrieval_report(
        q, d, ql, dl, chunk_size=7 if small_chunks else None, backend=backend, **kw
    )
    exp = oracle(q, d, ql, dl, Rs=kw["R"], ks=kw["ks"], radii=kw["radius"])
    for R in kw["R"]:
        name = "all" if R == -1 else str(R)
        assert rep[f"mAP@{name}"] == pytest.approx(exp[("mAP", R)], abs=1e-9)
        assert rep[f"tie_group_size@{name}"] == pytest.approx(exp[("tie", R)], abs=1e-9)
    for k in kw["ks"]:
        assert rep[f"P@{k}"] == pytest.approx(exp[("P", k)], abs=1e-9)
        assert rep[f"Recall@{k}"] == pytest.approx(exp[("Recall", k)], abs=1e-9)
        assert rep[f"HitRate@{k}"] == pytest.approx(exp[("Hit", k)], abs=1e-9)
    np.testing.assert_allclose(rep["pr_curve"]["precision"], exp["pr"][0], atol=1e-9, rtol=0)
    np.testing.assert_allclose(rep["pr_curve"]["recall"], exp["pr"][1], atol=1e-9, rtol=0)


# --------------------------------------------------------------------------------------------
# Tie-aware AP
# --------------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    problems(max_q=3, max_db=7, bits=(1, 2, 3)),
    engine_settings(),
    st.sampled_from(["count", "skip"]),
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_aware_matches_exhaustive_enumeration(backend, prob, cfg, zero_relevant):
    q, d, ql, dl, Rs, _, _ = prob
    with _patched(cfg):
        for R in Rs[:2]:
            got = mean_average_precision(
                q,
                d,
                ql,
                dl,
                R=R,
                ties="average",
                zero_relevant=zero_relevant,
                chunk_size=cfg["chunk"],
                backend=backend,
            )
            exp = tie_oracle(q, d, ql, dl, R, zero_relevant=zero_relevant)
            assert got == pytest.approx(exp, abs=1e-10)
        rep = retrieval_report(
            q,
            d,
            ql,
            dl,
            R=Rs,
            ks=(),
            zero_relevant=zero_relevant,
            chunk_size=cfg["chunk"],
            backend=backend,
        )
    for R in Rs:
        exp = tie_oracle(q, d, ql, dl, R, zero_relevant=zero_relevant)
        assert rep[f"mAP_tie@{'all' if R == -1 else R}"] == pytest.approx(exp, abs=1e-10)


def test_tie_aware_equals_mean_over_random_db_permutations():
    # Medium case with heavy ties (4 bits, 300 items -> ~19 items per distinct code): the mean
    # of ties="index" over random database permutations estimates the tie-aware value.
    rng = np.random.default_rng(7)
    q = rng.choice([-1.0, 1.0], (6, 4))
    d = rng.choice([-1.0, 1.0], (300, 4))
    ql, dl = rng.integers(0, 3, 6), rng.integers(0, 3, 300)
    R = 40
    exact = mean_average_precision(q, d, ql, dl, R=R, ties="average")
    samples = []
    for _ in range(200):
        perm = rng.permutation(300)
        samples.append(mean_average_precision(q, d[perm], ql, dl[perm], R=R, ties="index"))
    samples = np.array(samples)
    se = samples.std(ddof=1) / math.sqrt(len(samples))
    assert samples.std() > 1e-3  # ties really matter here
    assert abs(samples.mean() - exact) < 4.5 * se
    # The tie-aware value does not depend on the database order at all.
    perm = rng.permutation(300)
    assert mean_average_precision(q, d[perm], ql, dl[perm], R=R, ties="average") == pytest.approx(
        exact, abs=1e-12
    )


def test_tie_aware_equals_index_when_no_ties():
    # Without ties both definitions coincide: item i differs from the query in i bits.
    nbit = 12
    q = np.ones((1, nbit))
    d = np.array([[-1.0] * i + [1.0] * (nbit - i) for i in range(nbit + 1)])
    rng = np.random.default_rng(3)
    dl = rng.integers(0, 2, nbit + 1)
    for R in (1, 4, 13, -1):
        a = mean_average_precision(q, d, np.array([1]), dl, R=R, ties="index")
        b = mean_average_precision(q, d, np.array([1]), dl, R=R, ties="average")
        assert a == pytest.approx(b, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Invariances
# --------------------------------------------------------------------------------------------


def _medium(seed=0, n_q=20, n_db=150, nbit=10, multilabel=False):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n_q, nbit)).astype(np.float32)
    d = rng.normal(size=(n_db, nbit)).astype(np.float32)
    if multilabel:
        ql = (rng.random((n_q, 4)) < 0.3).astype(np.int64)
        dl = (rng.random((n_db, 4)) < 0.3).astype(np.int64)
    else:
        ql, dl = rng.integers(0, 4, n_q), rng.integers(0, 4, n_db)
    return q, d, ql, dl


def _scalars(rep):
    return {k: v for k, v in rep.items() if k != "pr_curve"}


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_invariances(multilabel, backend):
    q, d, ql, dl = _medium(multilabel=multilabel)
    kw = dict(R=[10, -1], ks=(1, 5, 50), radius=[0, 2], backend=backend)
    base = retrieval_report(q, d, ql, dl, **kw)
    # Query order.
    perm = np.random.default_rng(1).permutation(len(q))
    rep = retrieval_report(q[perm], d, ql[perm], dl, **kw)
    for k, v in _scalars(base).items():
        assert rep[k] == pytest.approx(v, abs=1e-12), k
    # Flipping every bit of queries and database together keeps every distance.
    qb, db = binarize(q).numpy(), binarize(d).numpy()
    rep = retrieval_report(-qb, -db, ql, dl, **kw)
    assert rep == base
    # ±1 codes vs the real-valued codes they came from.
    rep = retrieval_report(qb, db, ql, dl, **kw)
    assert rep == base
    # torch input (CPU) vs NumPy input.
    rep = retrieval_report(
        torch.from_numpy(q), torch.from_numpy(d), torch.from_numpy(ql), torch.from_numpy(dl), **kw
    )
    assert rep == base


def test_exact_zeros_map_to_plus_one():
    z = np.array([[0.0, -0.0, 1e-30, -1e-30]], dtype=np.float32)
    assert binarize(z).tolist() == [[1.0, 1.0, 1.0, -1.0]]
    q, d, ql, dl = _medium(seed=5)
    q[:, :3] = 0.0
    d[::2, :4] = 0.0
    q_pm = np.where(q >= 0, 1.0, -1.0)
    d_pm = np.where(d >= 0, 1.0, -1.0)
    for R in (5, -1):
        assert mean_average_precision(q, d, ql, dl, R=R) == mean_average_precision(
            q_pm, d_pm, ql, dl, R=R
        )


def test_bool_codes_are_bits():
    bits = np.array([[True, False, True]])
    assert binarize(bits).tolist() == [[1.0, -1.0, 1.0]]


def test_one_hot_2d_labels_equal_class_ids():
    q, d, ql, dl = _medium(seed=2)
    eye = np.eye(4, dtype=np.int64)
    a = retrieval_report(q, d, ql, dl, R=[7, -1], ks=(3,))
    b = retrieval_report(q, d, eye[ql], eye[dl], R=[7, -1], ks=(3,))
    for k, v in _scalars(a).items():
        assert b[k] == pytest.approx(v, abs=1e-12), k


# --------------------------------------------------------------------------------------------
# Report format, helpers
# --------------------------------------------------------------------------------------------


def test_report_keys_and_json():
    q, d, ql, dl = _medium(seed=4)
    rep = retrieval_report(q, d, ql, dl, R=[1000, -1, 10], ks=(1, 5, 1000), radius=2)
    expected = {
        "mAP@1000",
        "mAP@all",
        "mAP@10",
        "mAP_tie@1000",
        "mAP_tie@all",
        "mAP_tie@10",
        "tie_group_size@1000",
        "tie_group_size@all",
        "tie_group_size@10",
        "P@1",
        "P@5",
        "P@1000",
        "Recall@1",
        "Recall@5",
        "Recall@1000",
        "HitRate@1",
        "HitRate@5",
        "HitRate@1000",
        "P_radius@2",
        "R_radius@2",
        "distinct_distances",
        "num_queries",
        "num_db",
        "nbit",
        "pr_curve",
    }
    assert set(rep) == expected
    for k, v in rep.items():
        if k != "pr_curve":
            assert type(v) is float, k
    assert rep["mAP@1000"] == rep["mAP@all"]  # 1000 > n_db = 150
    assert set(rep["pr_curve"]) == {"radius", "precision", "recall"}
    assert len(rep["pr_curve"]["precision"]) == q.shape[1] + 1
    json.dumps(rep)
    rep = retrieval_report(q, d, ql, dl, R="all", pr_curve=False)
    assert "pr_curve" not in rep and "mAP@all" in rep
    assert mean_average_precision(q, d, ql, dl, R=5) == pytest.approx(
        retrieval_report(q, d, ql, dl, R=5)["mAP@5"], abs=1e-15
    )
    assert mean_average_precision(q, d, ql, dl, R=5, ties="average") == pytest.approx(
        retrieval_report(q, d, ql, dl, R=5)["mAP_tie@5"], abs=1e-15
    )


@pytest.mark.parametrize("nbit", [1, 7, 8, 24, 65])
def test_pack_and_distances(nbit):
    rng = np.random.default_rng(nbit)
    a = rng.normal(size=(9, nbit)).astype(np.float32)
    b = rng.normal(size=(13, nbit)).astype(np.float32)
    packed = pack_codes(a)
    assert packed.dtype == torch.uint8 and packed.shape == (9, (nbit + 7) // 8)
    np.testing.assert_array_equal(packed.numpy(), np.packbits(a >= 0, axis=1))
    assert torch.equal(unpack_bits(packed, nbit), binarize(a) > 0)
    dist = hamming_distance(a, b)
    brute = ((a[:, None, :] >= 0) != (b[None, :, :] >= 0)).sum(-1)
    np.testing.assert_array_equal(dist.numpy(), brute)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_classes_and_the_int32_key_limit(backend):
    # Up to 400 classes x 66 distances x 2 = 52,800 bins per query, inside the matmul (not the
    # explicit mode): a requested chunk of 10,000 queries runs; with the int32 key limit lowered
    # to the keys of 5 queries, the torch engine's chunks shrink below it, same results.
    rng = np.random.default_rng(12)
    q = rng.choice([-1.0, 1.0], (450, 65)).astype(np.float32)
    d = rng.choice([-1.0, 1.0], (30, 65)).astype(np.float32)
    q[:, :60] = 1.0  # heavy ties
    d[:, :60] = 1.0
    ql, dl = rng.integers(0, 400, 450), rng.integers(0, 400, 30)
    ql[:200] = dl[rng.integers(0, 30, 200)]  # make sure many queries have a relevant item
    exp = oracle(q, d, ql, dl, Rs=[3, -1], ks=[2], radii=[1])
    bins = 2 * len(np.unique(np.concatenate([ql, dl]))) * 66  # 2 sub-bins per class
    for limit in (None, 5 * bins):
        with contextlib.ExitStack() as stack:
            spy = stack.enter_context(
                mock.patch.object(torch_engine, "_chunk_keys", wraps=torch_engine._chunk_keys)
            )
            if limit:
                stack.enter_context(mock.patch.object(torch_engine, "_INT32_LIMIT", limit))
            rep = retrieval_report(
                q, d, ql, dl, R=[3, -1], ks=(2,), radius=1, chunk_size=10_000, backend=backend
            )
        chunks = [c.args[2] - c.args[1] for c in spy.call_args_list]  # (prep, start, stop)
        if backend == "torch":
            assert sum(chunks) == 450
            assert max(chunks) == (450 if limit is None else 4)  # 4 * bins < limit
        assert rep["mAP@3"] == pytest.approx(exp[("mAP", 3)], abs=1e-9)
        assert rep["mAP@all"] == pytest.approx(exp[("mAP", -1)], abs=1e-9)
        assert rep["P@2"] == pytest.approx(exp[("P", 2)], abs=1e-9)
        assert rep["P_radius@1"] == pytest.approx(exp[("Prad", 1)], abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 200), st.floats(0.0, 1.0), st.integers(0, 9), st.integers(0, 2**32 - 1))
def test_sparse_nonzero_matches_nonzero(n, p, offset, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n + offset, generator=g) < p
    view = mask[offset:]
    assert torch.equal(sparse_nonzero(view), view.nonzero().squeeze(1))


# --------------------------------------------------------------------------------------------
# Backends: numba kernels vs torch engine, selection and fallback
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbit, n_lab", [(12, 0), (64, 0), (65, 3), (128, 70), (24, 21)])
def test_numba_equals_torch(nbit, n_lab):
    # Multi-word codes (65, 128 bits) and labels (70 labels = 2 uint64 words), heavy ties
    # (12 bits): every number of the report is the same float as the torch engine's.
    rng = np.random.default_rng(nbit + n_lab)
    n_q, n_db = 23, 1500
    q = rng.normal(size=(n_q, nbit)).astype(np.float32)
    d = rng.normal(size=(n_db, nbit)).astype(np.float32)
    d[::3] = q[rng.integers(0, n_q, len(d[::3]))]  # exact duplicates of queries: ties at 0
    if n_lab:
        ql = (rng.random((n_q, n_lab)) < 3 / n_lab).astype(np.int64)
        dl = (rng.random((n_db, n_lab)) < 3 / n_lab).astype(np.int64)
    else:
        ql, dl = rng.integers(0, 5, n_q), rng.integers(0, 5, n_db)
    kw = dict(R=[1, 100, 777, -1], ks=(1, 10, 100, 1499, 5000), radius=[0, 2, nbit])
    a = retrieval_report(q, d, ql, dl, backend="numba", **kw)
    b = retrieval_report(q, d, ql, dl, backend="torch", **kw)
    assert a == b
    for R in (1, 100, -1):
        for ties in ("index", "average"):
            assert mean_average_precision(
                q, d, ql, dl, R=R, ties=ties, backend="numba"
            ) == mean_average_precision(q, d, ql, dl, R=R, ties=ties, backend="torch")


@pytest.mark.parametrize("kind", ["float", "bool", "int8", "torch_uint8", "bool_codes"])
def test_numba_label_and_code_dtypes(kind):
    q, d, ql, dl = _medium(seed=8)
    if kind == "float":
        ql, dl = ql.astype(np.float64) * 1e6 - 3, dl.astype(np.float64) * 1e6 - 3
    elif kind == "bool":
        ql, dl = ql > 1, dl > 1
    elif kind == "int8":
        ql, dl = ql.astype(np.int8) - 2, dl.astype(np.int8) - 2
    elif kind == "torch_uint8":
        ql, dl = torch.from_numpy(ql.astype(np.uint8)), torch.from_numpy(dl.astype(np.uint8))
    else:
        q, d = q >= 0, d >= 0
    kw = dict(R=[5, -1], ks=(1, 7), radius=[1])
    assert retrieval_report(q, d, ql, dl, backend="numba", **kw) == retrieval_report(
        q, d, ql, dl, backend="torch", **kw
    )


def test_backend_auto_choice():
    q, d, ql, dl = _medium(seed=6)
    with mock.patch.object(numba_engine, "run", side_effect=AssertionError):
        exp = mean_average_precision(q, d, ql, dl, R=9, backend="torch")  # torch: no numba
    with mock.patch.object(numba_engine, "run", wraps=numba_engine.run) as spy:
        assert mean_average_precision(q, d, ql, dl, R=9) == exp
    assert spy.called  # auto = numba on the CPU (CUDA inputs: test_cuda_matches_cpu)
    with pytest.raises(ValueError, match="unknown backend='cuda'"):
        retrieval_report(q, d, ql, dl, backend="cuda")


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

_Q, _D, _QL, _DL = _medium(seed=9, n_q=4, n_db=10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(db_codes=_D[:, :5]), "nbit mismatch"),
        (dict(query_codes=_Q[:0], query_labels=_QL[:0]), "empty query set"),
        (dict(db_codes=_D[:0], db_labels=_DL[:0]), "empty database"),
        (dict(query_codes=np.where(np.eye(4, 10) > 0, np.nan, _Q)), "NaN or inf"),
        (dict(db_codes=np.where(np.eye(10) > 0, np.inf, _D)), "NaN or inf"),
        (dict(query_codes=_Q[0]), "must be 2-D"),
        (dict(query_labels=_QL[:3]), "query_labels has 3 rows but query_codes has 4"),
        (dict(db_labels=_DL[:9]), "db_labels has 9 rows but db_codes has 10"),
        (dict(query_labels=np.eye(4, 3)), "label kinds differ"),
        (dict(query_labels=np.eye(4, 3), db_labels=np.eye(10, 2)), "widths differ"),
        (dict(query_labels=np.full((4, 3), 2), db_labels=np.eye(10, 3)), "must be 0/1"),
        (dict(query_labels=np.eye(4, 3), db_labels=np.eye(10, 3) * 0.5), "must be 0/1"),
        (dict(query_labels=np.zeros((4, 2, 2))), "1-D class ids or 2-D multi-hot"),
        (dict(query_labels=np.array([0.5, 1, 2, 3])), "must be integers"),
        (dict(R=0), "R == 0"),
        (dict(R=-2), "R = -2 < -1"),
        (dict(R=2.5), "R must be"),
        (dict(ties="random"), "unknown ties='random'"),
        (dict(zero_relevant="ignore"), "unknown zero_relevant='ignore'"),
    ],
)
def test_bad_input_map(kwargs, match):
    args = dict(query_codes=_Q, db_codes=_D, query_labels=_QL, db_labels=_DL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mean_average_precision(**args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(R=[10, 0]), "R == 0"),
        (dict(R=-5), "R = -5 < -1"),
        (dict(ks=(0, 5)), "ks must be >= 1"),
        (dict(radius=-1), "radius must be >= 0"),
        (dict(zero_relevant="drop"), "unknown zero_relevant"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(chunk_size=0, backend="torch"), "chunk_size"),
        (dict(db_codes=_D[:, :3]), "nbit mismatch"),
        (dict(backend="gpu"), "unknown backend='gpu'"),
    ],
)
def test_bad_input_report(kwargs, match):
    args = dict(query_codes=_Q, db_codes=_D, query_labels=_QL, db_labels=_DL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        retrieval_report(**args)


# --------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("multilabel", [False, True])
def test_cuda_matches_cpu(multilabel):
    q, d, ql, dl = _medium(seed=11, n_q=50, n_db=3000, nbit=24, multilabel=multilabel)
    kw = dict(R=[100, -1], ks=(1, 10, 100), radius=[0, 2])
    cpu = retrieval_report(q, d, ql, dl, **kw)
    dev = torch.device("cuda")
    with mock.patch.object(numba_engine, "run", side_effect=AssertionError):  # auto = torch
        gpu = retrieval_report(
            torch.from_numpy(q).to(dev),
            torch.from_numpy(d).to(dev),
            torch.from_numpy(ql).to(dev),
            torch.from_numpy(dl).to(dev),
            **kw,
        )
    for k, v in _scalars(cpu).items():
        assert gpu[k] == pytest.approx(v, abs=1e-9), k
    np.testing.assert_allclose(
        gpu["pr_curve"]["precision"], cpu["pr_curve"]["precision"], atol=1e-12
    )
    # Database on the CPU, queries on the GPU: everything moves to the queries' device.
    mixed = mean_average_precision(torch.from_numpy(q).to(dev), d, ql, dl, R=100, ties="average")
    assert mixed == pytest.approx(cpu["mAP_tie@100"], abs=1e-9)


@pytest.mark.parametrize("layer", ["default", "workqueue"])
def test_numba_kernels_leave_torch_threads_alone(layer):
    """A parallel numba kernel must not change torch's OpenMP thread count: with numba's "omp"
    layer (the default where available), torch ran with 2 threads after one evaluation despite
    OMP_NUM_THREADS=1, and training steps became 5-14x slower on a busy CPU. Fresh process for
    each threading layer (chosen at the first parallel launch)."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, numba\n"
        "from utils.retrieval import retrieval_report\n"
        "g = torch.Generator().manual_seed(0)\n"
        "q, d = torch.randn(50, 32, generator=g), torch.randn(3000, 32, generator=g)\n"
        "retrieval_report(q, d, torch.arange(50) % 5, torch.arange(3000) % 5, R=100,\n"
        "                 backend='numba')\n"
        "print(torch.get_num_threads(), numba.threading_layer())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    env["OMP_NUM_THREADS"] = "1"
    if layer != "default":
        env["NUMBA_THREADING_LAYER"] = layer
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO),
    )
    assert result.returncode == 0, result.stderr
    threads, used = result.stdout.split()
    assert threads == "1", used
    if layer != "default":
        assert used == layer
