"""Numba CPU kernels of the retrieval engine (utils/retrieval.py): two linear passes, no sort.

Codes are packed into uint64 words (``nw = ceil(nbit / 64)``, padding bits 0 on both sides),
labels into int64 class ids (single-label) or uint64 label bitmasks (multi-label,
``ceil(C / 64)`` words). Per query (``prange`` over blocks of queries):

1. one pass over the database: ``d = popcount(q xor g)`` and the relevance give the key
   ``2 d + rel`` (kept in a per-thread uint16 buffer) and the histogram of keys, i.e. the items
   and the relevant items per distance;
2. when index-ordered quantities are needed (T = the largest cut-off > 0): ``d_T`` = the distance
   whose group contains rank T; a second pass over the key buffer in index order gives every
   item with ``d <= d_T`` its rank ``(items in lower groups) + (items of its group seen so far)``
   and writes its relevance at that rank (stopping once ranks ``1..T`` are filled); one
   sequential scan of the T ranked relevances then gives ``L(k)`` and
   ``S(R) = sum_{k<=R} rel_k L(k) / k`` exactly as the torch path computes them (same order of
   float64 operations).

``HAVE_NUMBA`` is False when numba cannot be imported; the caller then uses the torch path.
"""

from __future__ import annotations

import numpy as np

try:  # pragma: no cover - exercised whichever way the environment is
    import numba
    from numba import njit, prange, types
    from numba.extending import intrinsic

    HAVE_NUMBA = True
except Exception:  # noqa: BLE001 - any import problem means "no fast path"
    numba = None
    HAVE_NUMBA = False


if HAVE_NUMBA:

    @intrinsic
    def _popcount(typingctx, x):
        """LLVM ``ctpop`` of a uint64 (one ``popcnt`` instruction), as int64."""
        if not (isinstance(x, types.Integer) and x.bitwidth == 64):
            return None
        sig = types.int64(x)

        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return sig, codegen

    @njit(cache=True, fastmath=False)
    def _keys_single(qw, i, dw, qid, did, buf, h):
        """Keys ``2 d + rel`` of query i against the database (single-label) and their histogram."""
        nw = qw.shape[1]
        ndb = dw.shape[0]
        c = qid[i]
        if nw == 1:
            q0 = qw[i, 0]
            # four interleaved histograms break the store-to-load dependency of h[key] += 1
            nh = h.shape[0]
            h4 = np.zeros((4, nh), np.int64)
            head = ndb - ndb % 4
            for j in range(0, head, 4):
                k0 = 2 * _popcount(q0 ^ dw[j, 0]) + (did[j] == c)
                k1 = 2 * _popcount(q0 ^ dw[j + 1, 0]) + (did[j + 1] == c)
                k2 = 2 * _popcount(q0 ^ dw[j + 2, 0]) + (did[j + 2] == c)
                k3 = 2 * _popcount(q0 ^ dw[j + 3, 0]) + (did[j + 3] == c)
                buf[j] = k0
                buf[j + 1] = k1
                buf[j + 2] = k2
                buf[j + 3] = k3
                h4[0, k0] += 1
                h4[1, k1] += 1
                h4[2, k2] += 1
                h4[3, k3] += 1
            for j in range(head, ndb):
                key = 2 * _popcount(q0 ^ dw[j, 0]) + (did[j] == c)
                buf[j] = key
                h4[0, key] += 1
            for b in range(nh):
                h[b] += h4[0, b] + h4[1, b] + h4[2, b] + h4[3, b]
        else:
            for j in range(ndb):
                d = 0
                for w in range(nw):
                    d += _popcount(qw[i, w] ^ dw[j, w])
                key = 2 * d + (did[j] == c)
                buf[j] = key
                h[key] += 1

    @njit(cache=True, fastmath=False)
    def _keys_multi(qw, i, dw, qm, dm, buf, h):
        """Keys ``2 d + rel`` of query i against the database (multi-label bitmasks)."""
        nw = qw.shape[1]
        nl = qm.shape[1]
        ndb = dw.shape[0]
        zero = np.uint64(0)
        if nw == 1 and nl == 1:
            q0 = qw[i, 0]
            m0 = qm[i, 0]
            for j in range(ndb):
                key = 2 * _popcount(q0 ^ dw[j, 0]) + ((m0 & dm[j, 0]) != zero)
                buf[j] = key
                h[key] += 1
        else:
            for j in range(ndb):
                d = 0
                for w in range(nw):
                    d += _popcount(qw[i, w] ^ dw[j, w])
                rel = 0
                for w in range(nl):
                    if (qm[i, w] & dm[j, w]) != zero:
                        rel = 1
                        break
                key = 2 * d + rel
                buf[j] = key
                h[key] += 1

    @njit(parallel=True, cache=True, fastmath=False)
    def engine(qw, dw, qid, did, qm, dm, multilabel, nbit, T, Lks, Rs, n_blocks,
               n_hist, r_hist, L_out, S_out):
        """Histograms for every query and, when ``T > 0``, ``L(k)`` for ``k in Lks`` and
        ``S(R)`` for ``R in Rs`` (both sorted ascending, effective cut-offs ``1..T``).

        Args:
            qw, dw: ``(Q, nw)``/``(N, nw)`` uint64 packed codes.
            qid, did: int64 ``(Q,)``/``(N,)`` class ids (used unless ``multilabel``);
            qm, dm: uint64 ``(Q, nl)``/``(N, nl)`` label bitmasks (used when ``multilabel``).
            n_hist, r_hist: ``(Q, nbit + 1)`` int64 outputs; L_out ``(Q, len(Lks))`` int64 and
                S_out ``(Q, len(Rs))`` float64 outputs.
        """
        nq = qw.shape[0]
        ndb = dw.shape[0]
        nb = nbit + 1
        nL = Lks.shape[0]
        nS = Rs.shape[0]
        per = (nq + n_blocks - 1) // n_blocks
        for blk in prange(n_blocks):
            s = blk * per
            e = min(nq, s + per)
            if s < e:
                buf = np.empty(ndb, np.uint16)
                h = np.empty(2 * nb, np.int64)
                before = np.empty(nb, np.int64)
                seen = np.empty(nb, np.int64)
                relbuf = np.empty(max(T, 1), np.uint8)
                for i in range(s, e):
                    h[:] = 0
                    if multilabel:
                        _keys_multi(qw, i, dw, qm, dm, buf, h)
                    else:
                        _keys_single(qw, i, dw, qid, did, buf, h)
                    for d in range(nb):
                        n_hist[i, d] = h[2 * d] + h[2 * d + 1]
                        r_hist[i, d] = h[2 * d + 1]
                    if T > 0:
                        cum = 0
                        dT = -1
                        for d in range(nb):
                            before[d] = cum
                            seen[d] = 0
                            cum += n_hist[i, d]
                            if dT < 0 and cum >= T:
                                dT = d
                        lim = 2 * dT + 1
                        filled = 0
                        for j in range(ndb):
                            key = np.int64(buf[j])
                            if key <= lim:
                                d = key >> 1
                                r0 = before[d] + seen[d]
                                seen[d] += 1
                                if r0 < T:
                                    relbuf[r0] = key & 1
                                    filled += 1
                                    if filled == T:
                                        break
                        L = 0
                        acc = 0.0
                        li = 0
                        si = 0
                        for r in range(T):
                            rel = relbuf[r]
                            if rel:
                                L += 1
                                acc += L / (r + 1)
                            while li < nL and Lks[li] == r + 1:
                                L_out[i, li] = L
                                li += 1
                            while si < nS and Rs[si] == r + 1:
                                S_out[i, si] = acc
                                si += 1


def pack_bits_u64(bits: np.ndarray) -> np.ndarray:
    """``(N, n)`` bool -> ``(N, ceil(n / 64))`` uint64 words (zero padding; any fixed bit order)."""
    n, width = bits.shape
    nw = max(1, (width + 63) // 64)
    packed = np.packbits(bits, axis=1)
    out = np.zeros((n, nw * 8), dtype=np.uint8)
    out[:, : packed.shape[1]] = packed
    return out.view(np.uint64)
