"""Packed codes as an explicit input of the retrieval engine (packed=True, nbit=K), and the
uint8-passed-as-real-codes trap turned into an error."""

import numpy as np
import pytest
import torch

from utils.retrieval import (
    mean_average_precision,
    pack_codes,
    retrieval_report,
    unpack_bits,
)

BACKENDS = ["torch", "numba", "auto"]


def test_hand_computed_packed_map_and_the_trap():
    # query 11110000; db: d=0 relevant, d=8 irrelevant, d=1 irrelevant, d=1 relevant
    q = np.array([[0b11110000]], dtype=np.uint8)
    db = np.array([[0b11110000], [0b00001111], [0b11100000], [0b11110001]], dtype=np.uint8)
    ql, dl = np.array([1]), np.array([1, 0, 0, 1])
    # ranking (distance, index): 0 (rel), 2, 3 (rel), 1 -> AP = (1/1 + 2/3) / 2
    for backend in BACKENDS:
        got = mean_average_precision(q, db, ql, dl, R=-1, packed=True, nbit=8, backend=backend)
        assert got == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    # read as real-valued codes every bit is +1 (all ties, index order: AP = (1 + 2/4) / 2 =
    # 0.75): refused with one sentence instead
    with pytest.raises(
        ValueError,
        match="uint8 array, which is read as real-valued codes where "
        "every bit becomes \\+1: pass bit-packed codes with "
        "packed=True, nbit=K",
    ):
        mean_average_precision(q, db, ql, dl, R=-1)


@pytest.mark.parametrize("nbit", [8, 12, 64, 100])
@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_input_equals_real_valued_input(nbit, backend):
    g = torch.Generator().manual_seed(nbit)
    qc, dc = torch.randn((30, nbit), generator=g), torch.randn((500, nbit), generator=g)
    dc[::7, 0] = 0.0  # exact zeros are +1 in both forms
    ql, dl = torch.randint(0, 5, (30,), generator=g), torch.randint(0, 5, (500,), generator=g)
    qp, dp = pack_codes(qc).numpy(), np.packbits((dc >= 0).numpy(), axis=1)
    for R in (-1, 50):
        assert mean_average_precision(
            qp, dp, ql, dl, R=R, packed=True, nbit=nbit, backend=backend
        ) == mean_average_precision(qc, dc, ql, dl, R=R, backend=backend)
    a = retrieval_report(qp, dp, ql, dl, R=[50, -1], packed=True, nbit=nbit, backend=backend)
    b = retrieval_report(qc, dc, ql, dl, R=[50, -1], backend=backend)
    assert a == b


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_unsigned_codes_without_packed_are_refused(dtype):
    codes = np.zeros((3, 8), dtype=dtype)
    labels = np.arange(3)
    with pytest.raises(ValueError, match="packed=True, nbit=K"):
        retrieval_report(codes, codes, labels, labels)
    with pytest.raises(ValueError, match="packed=True, nbit=K"):
        mean_average_precision(
            torch.from_numpy(codes.astype(np.uint8)), codes.astype(np.int8), labels, labels
        )


def test_packed_argument_errors():
    p = np.zeros((2, 2), dtype=np.uint8)
    lab = np.arange(2)
    with pytest.raises(ValueError, match="nbit=17 does not match 2 bytes"):
        mean_average_precision(p, p, lab, lab, packed=True, nbit=17)
    with pytest.raises(ValueError, match="nbit=8 does not match 2 bytes"):
        mean_average_precision(p, p, lab, lab, packed=True, nbit=8)
    with pytest.raises(ValueError, match="packed codes need nbit=K"):
        mean_average_precision(p, p, lab, lab, packed=True)
    with pytest.raises(ValueError, match="must be a 2-D uint8 array of packed codes"):
        mean_average_precision(p.astype(np.float32), p, lab, lab, packed=True, nbit=16)
    with pytest.raises(ValueError, match="nbit is only read with packed=True"):
        mean_average_precision(p.astype(np.float32), p.astype(np.float32), lab, lab, nbit=2)


def test_unpack_round_trip():
    u = torch.randn((9, 13))
    bits = unpack_bits(pack_codes(u), 13)
    assert bits.dtype == torch.bool
    assert torch.equal(bits, u >= 0)
