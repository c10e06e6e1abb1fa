"""Sign with a straight-through gradient (GreedyHash's hash layer; methods.md §2 "SignHash").

Paper: Su et al., "Greedy Hash: Towards Fast Optimization for Accurate Hash Coding in CNN",
NeurIPS 2018. Used by UGH (on the hash-layer output, in training and evaluation) and CIBHash
(on p - 0.5, in training only).

forward:  y = sign(x), elementwise, any shape; values in {-1, 0, +1} (torch semantics: sign(0) = 0,
          as the reference; the retrieval engine binarises codes with >= 0 anyway).
backward: dL/dx = dL/dy, the identity, with NO clipping to |x| <= 1 (unlike the hard-tanh STE of
          BinaryConnect); the reference's SignHash does the same.
"""

from __future__ import annotations

from typing import Any, cast

import torch


class SignSTE(torch.autograd.Function):
    """y = sign(x); the gradient passes through unchanged (straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # ctx: torch's FunctionCtx
        return torch.sign(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (same shape and dtype as x) with an identity backward; see :class:`SignSTE`."""
    return cast(torch.Tensor, SignSTE.apply(x))  # apply is typed Any in torch
