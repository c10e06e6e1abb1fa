"""Binary codes: validation, binarisation, bit packing and Hamming distances of code sets.

Conventions (design.md §5; the package docstring has all of them): the binary code of a
real-valued ``(N, nbit)`` code is ``+1 where u >= 0 else -1`` (an exact zero becomes +1; bool
codes are bits, True -> +1). Packed codes are ``(N, ceil(nbit / 8))`` uint8 in the
``numpy.packbits`` layout: bit j in byte ``j // 8`` at position ``7 - j % 8``, bit 1 = +1, zero
padding. Unsigned arrays passed as real-valued codes are refused (every bit would read as +1).

Tested in ``tests/utils/test_retrieval.py`` (binarisation, packing, distances against brute
force) and ``tests/utils/test_retrieval_packed.py`` (packed input, the unsigned-array trap).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["binarize", "pack_codes", "unpack_bits", "hamming_distance"]

_UNSIGNED = (torch.uint8, torch.uint16, torch.uint32, torch.uint64)


def as_tensor(x: object, name: str) -> torch.Tensor:
    """A torch tensor view of ``x`` (torch tensors pass through; NumPy arrays and lists go to
    the CPU, copied only when read-only or not C-contiguous)."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic input
        raise ValueError(f"{name} cannot be converted to an array: {exc}") from exc
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object")
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, copy=True)
    return torch.from_numpy(arr)


def check_codes(codes: torch.Tensor, name: str) -> None:
    """Refuse what cannot be real-valued ``(N, nbit)`` codes: unsigned arrays, other shapes,
    complex values, ``nbit = 0``, NaN or inf."""
    if codes.dtype in _UNSIGNED:  # every value >= 0 would binarise to +1: a silent wrong result
        raise ValueError(
            f"{name} is a {codes.dtype} array, which is read as real-valued codes where every "
            "bit becomes +1: pass bit-packed codes with packed=True, nbit=K, or real-valued "
            "codes as float, int8 or bool"
        )
    if codes.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, nbit), got shape {tuple(codes.shape)}")
    if codes.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {codes.dtype}")
    if codes.shape[1] == 0:
        raise ValueError(f"{name} has nbit = 0 (no bits)")
    if codes.is_floating_point() and codes.numel():
        lo, hi = torch.aminmax(codes)  # one reduction pass; NaN propagates
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            raise ValueError(f"{name} contain NaN or inf values")


def code_bits(codes: torch.Tensor) -> torch.Tensor:
    """``(N, nbit)`` bool bits of validated codes: True = +1 (``u >= 0``; bool codes as they
    are)."""
    return codes if codes.dtype == torch.bool else codes >= 0


def fill_pm1(out: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Write the ±1 binary codes of ``codes`` into the float tensor ``out`` (same shape) and
    return it; no temporary beyond ``code_bits``."""
    out.copy_(code_bits(codes))
    return out.mul_(2).sub_(1)


def binarize(codes: object) -> torch.Tensor:
    """±1 float32 codes: ``+1 where u >= 0 else -1`` (exact zeros become +1).

    Args:
        codes: ``(N, nbit)`` real-valued tensor or array (bool is read as bits: True -> +1).
    Returns:
        ``(N, nbit)`` float32 tensor of ±1 on the input's device (NumPy input -> CPU).
    """
    u = as_tensor(codes, "codes")
    check_codes(u, "codes")
    return fill_pm1(torch.empty(u.shape, dtype=torch.float32, device=u.device), u)


def pack_codes(codes: object) -> torch.Tensor:
    """Pack binarised codes into bits, 8 per byte (the layout of the module docstring).

    Used by ``utils/code_index.py`` (the faiss index of the search) for its packed codes.

    Args:
        codes: ``(N, nbit)`` real-valued codes (binarised with :func:`binarize`).
    Returns:
        ``(N, ceil(nbit / 8))`` uint8 tensor on the input's device; the last byte is padded with
        zero bits.
    """
    bits = binarize(codes) > 0
    n_codes, nbit = bits.shape
    nbytes = (nbit + 7) // 8
    padded = torch.zeros((n_codes, nbytes * 8), dtype=torch.uint8, device=bits.device)
    padded[:, :nbit] = bits.to(torch.uint8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=bits.device)
    return (padded.view(n_codes, nbytes, 8) * weights).sum(dim=2, dtype=torch.uint8)


def unpack_bits(packed: object, nbit: object, name: str = "packed") -> torch.Tensor:
    """Bits of packed codes (layout of :func:`pack_codes`), the engines' reading of
    ``packed=True`` input.

    Args:
        packed: ``(N, nbytes)`` uint8; nbit: the code width K, ``ceil(K / 8) == nbytes``.
    Returns:
        ``(N, nbit)`` bool tensor, True = +1 (the padding bits of the last byte dropped).
    """
    packed_t = as_tensor(packed, name)
    if packed_t.dtype != torch.uint8 or packed_t.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D uint8 array of packed codes, got {packed_t.dtype} "
            f"{tuple(packed_t.shape)}"
        )
    if isinstance(nbit, (bool, np.bool_)) or not isinstance(nbit, (int, np.integer)):
        raise ValueError(f"packed codes need nbit=K (a positive integer), got nbit={nbit!r}")
    if not 8 * packed_t.shape[1] - 8 < nbit <= 8 * packed_t.shape[1]:
        raise ValueError(
            f"nbit={nbit} does not match {packed_t.shape[1]} bytes per packed code "
            f"(ceil(nbit / 8) bytes per code)"
        )
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed_t.device)
    bits = (packed_t.unsqueeze(2) >> shifts) & 1
    return bits.reshape(packed_t.shape[0], -1)[:, : int(nbit)].bool()


def hamming_distance(a: object, b: object) -> torch.Tensor:
    """All pairwise Hamming distances between two sets of (real-valued) codes.

    Used by ``utils/diagnostics.py`` (distance histograms).

    Args:
        a: ``(Na, nbit)`` codes; b: ``(Nb, nbit)`` codes (binarised with :func:`binarize`).
    Returns:
        ``(Na, Nb)`` int32 tensor of distances in ``0..nbit``, ``d = (nbit - <a, b>) / 2``, on
        ``a``'s device.
    """
    pm1_a, pm1_b = binarize(a), binarize(b)
    if pm1_a.shape[1] != pm1_b.shape[1]:
        raise ValueError(f"nbit mismatch: {pm1_a.shape[1]} bits vs {pm1_b.shape[1]} bits")
    pm1_b = pm1_b.to(pm1_a.device)
    dtype = torch.float64 if pm1_a.is_cuda else torch.float32  # float64: immune to TF32
    nbit = pm1_a.shape[1]
    with torch.autocast(device_type=pm1_a.device.type, enabled=False):
        dot = pm1_a.to(dtype) @ pm1_b.to(dtype).T
    return ((nbit - dot) / 2).round().to(torch.int32)
