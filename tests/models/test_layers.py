"""Special layers: sign with straight-through gradient, and the bi-half layer (methods.md §2)."""

import numpy as np
import pytest
import torch

from models.layers.bihalf import BiHalf, BiHalfFunction, bihalf, bihalf_codes
from models.layers.sign import SignSTE, sign_ste

# ---------------------------------------------------------------- sign, straight-through


def test_sign_forward_uses_torch_semantics_with_zero():
    x = torch.tensor([-2.5, -0.1, 0.0, 0.3, 7.0])
    assert sign_ste(x).tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0]
    assert sign_ste(x).dtype == x.dtype


def test_sign_backward_is_the_identity_without_clipping():
    # |x| > 1 still gets the full gradient (no hard-tanh clipping), and so does x = 0.
    x = torch.tensor([[-3.0, 0.0], [0.5, 12.0]], requires_grad=True)
    g = torch.tensor([[0.1, -0.2], [0.3, -0.4]])
    sign_ste(x).backward(g)
    assert x.grad.tolist() == g.tolist()


def test_sign_backward_equals_autograd_of_the_linear_surrogate_and_gradchecks():
    # The forward is piecewise constant (numerical gradient 0), so gradcheck the surrogate whose
    # autograd gradient the STE claims to be: S(x) = <g, x> (+ the constant sign(x)).
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 4, dtype=torch.float64)
    (ste_grad,) = torch.autograd.grad((sign_ste(x) * g).sum(), x)
    (surrogate_grad,) = torch.autograd.grad((x * g).sum(), x)
    assert torch.equal(ste_grad, surrogate_grad)
    assert torch.autograd.gradcheck(lambda u: (u * g).sum() + torch.sign(u).sum(), (x,))
    # the Function itself: backward returns its input unchanged
    assert torch.equal(SignSTE.backward(None, g), g)


# ---------------------------------------------------------------- bi-half forward


def test_bihalf_examples_of_methods_md():
    assert bihalf_codes(torch.tensor([[3.0], [1.0], [2.0], [0.0]])).flatten().tolist() == [
        1.0,
        -1.0,
        1.0,
        -1.0,
    ]
    # odd N = 3: floor(3/2) = 1 row gets +1, the median row (value 1) gets -1
    assert bihalf_codes(torch.tensor([[2.0], [0.0], [1.0]])).flatten().tolist() == [1.0, -1.0, -1.0]


def test_bihalf_columns_are_independent():
    u = torch.tensor([[3.0, 0.5], [1.0, -1.0], [2.0, 0.0], [0.0, 2.0]])
    # column 0: top two are 3 (row 0) and 2 (row 2); column 1: 2 (row 3) and 0.5 (row 0)
    assert bihalf_codes(u).tolist() == [[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]


def test_bihalf_ties_go_to_the_lower_row_index():
    constant = torch.full((4, 1), 0.7)
    assert bihalf_codes(constant).flatten().tolist() == [1.0, 1.0, -1.0, -1.0]
    # u = (1, 5, 1, 1, 0, 1): 5 is first; then the 1s at rows 0, 2 (lower indices) -> 3 of 6
    u = torch.tensor([1.0, 5.0, 1.0, 1.0, 0.0, 1.0]).unsqueeze(1)
    assert bihalf_codes(u).flatten().tolist() == [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
    # odd N with ties: (1, 1, 1) -> one +1, at row 0
    assert bihalf_codes(torch.ones(3, 1)).flatten().tolist() == [1.0, -1.0, -1.0]


def _rank_rule(u: np.ndarray) -> np.ndarray:
    """Independent oracle: b_ij = +1 iff fewer than floor(N/2) rows rank above row i in column j,
    where row r ranks above i when u_rj > u_ij, or u_rj == u_ij and r < i."""
    n = u.shape[0]
    out = np.empty_like(u)
    for j in range(u.shape[1]):
        for i in range(n):
            above = sum(1 for r in range(n) if u[r, j] > u[i, j] or (u[r, j] == u[i, j] and r < i))
            out[i, j] = 1.0 if above < n // 2 else -1.0
    return out


@pytest.mark.parametrize("n", [2, 3, 8, 9, 16])
def test_bihalf_exactly_half_per_bit_on_random_and_heavily_tied_inputs(n):
    generator = torch.Generator().manual_seed(n)
    random = torch.randn(n, 5, generator=generator)
    tied = torch.randint(0, 2, (n, 5), generator=generator).float()  # only two distinct values
    for u in (random, tied, torch.zeros(n, 5)):
        b = bihalf_codes(u)
        assert set(b.unique().tolist()) <= {-1.0, 1.0}
        assert (b == 1).sum(dim=0).tolist() == [n // 2] * 5  # exactly floor(N/2) +1 per bit
        assert np.array_equal(b.numpy(), _rank_rule(u.numpy()))


def test_bihalf_equals_the_references_strict_median_rule_without_ties():
    # Without ties, "+1 iff strictly above the lower median" (reference) = "top floor(N/2)".
    torch.manual_seed(1)
    for n in (6, 7):
        u = torch.randn(n, 8)
        lower_median = u.sort(dim=0).values[(n - 1) // 2]
        reference = torch.where(u > lower_median, 1.0, -1.0)
        assert torch.equal(bihalf_codes(u), reference)


def test_bihalf_keeps_dtype_and_rejects_one_row():
    u = torch.randn(4, 3, dtype=torch.float64)
    assert bihalf_codes(u).dtype == torch.float64
    with pytest.raises(ValueError, match="at least two rows per bit"):
        bihalf_codes(torch.randn(1, 3))
    with pytest.raises(ValueError, match="at least two rows per bit"):
        BiHalf().train()(torch.randn(1, 3))


# ---------------------------------------------------------------- bi-half backward


def test_bihalf_backward_by_hand():
    # N = 4 rows, K = 2 bits, gamma = 4 -> gamma / (N K) = 0.5
    u = torch.tensor([[3.0, 0.5], [1.0, -1.0], [2.0, 0.0], [0.0, 2.0]], requires_grad=True)
    # b = [[+1, +1], [-1, -1], [+1, -1], [-1, +1]] (test above), so
    # u - b = [[2, -0.5], [2, 0], [1, 1], [1, 1]]
    g = torch.ones(4, 2)
    bihalf(u, gamma=4.0).backward(g)
    # grad = g + 0.5 (u - b)
    assert u.grad.tolist() == [[2.0, 0.75], [2.0, 1.0], [1.5, 1.5], [1.5, 1.5]]


def test_bihalf_backward_by_hand_one_column_gamma_6():
    # u = (3, 1, 2, 0), b = (+1, -1, +1, -1), u - b = (2, 2, 1, 1); gamma / (N K) = 6 / 4 = 1.5
    u = torch.tensor([[3.0], [1.0], [2.0], [0.0]], requires_grad=True)
    g = torch.tensor([[0.1], [-0.2], [0.3], [0.0]])
    bihalf(u, 6.0).backward(g)
    assert u.grad.flatten().tolist() == pytest.approx([0.1 + 3.0, -0.2 + 3.0, 0.3 + 1.5, 1.5])


def test_bihalf_backward_equals_autograd_of_its_surrogate_and_gradchecks():
    # dL/du = g + gamma/(NK) (u - b) is the gradient of S(u) = <g, u> + gamma/(2NK) ||u - b||^2
    # with b held fixed; compare with autograd of S and gradcheck S in float64.
    torch.manual_seed(2)
    n, k, gamma = 6, 3, 6.0
    u = torch.randn(n, k, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n, k, dtype=torch.float64)
    b = bihalf_codes(u.detach())

    def surrogate(v):
        return (g * v).sum() + gamma / (2 * n * k) * (v - b).pow(2).sum()

    (layer_grad,) = torch.autograd.grad((bihalf(u, gamma) * g).sum(), u)
    (surrogate_grad,) = torch.autograd.grad(surrogate(u), u)
    assert torch.allclose(layer_grad, surrogate_grad, atol=1e-12)
    assert torch.autograd.gradcheck(surrogate, (u,))


def test_bihalf_gamma_is_per_instance():
    u = torch.tensor([[3.0], [1.0], [2.0], [0.0]])
    layers = [BiHalf(gamma=6.0).train(), BiHalf(gamma=0.0).train()]  # built before either runs
    grads = []
    for layer in layers:
        x = u.clone().requires_grad_(True)
        layer(x).sum().backward()
        grads.append(x.grad.flatten().tolist())
    assert layers[0].gamma == 6.0 and layers[1].gamma == 0.0
    assert grads[0] == pytest.approx([1 + 3.0, 1 + 3.0, 1 + 1.5, 1 + 1.5])  # 1 + 1.5 (u - b)
    assert grads[1] == [1.0, 1.0, 1.0, 1.0]  # gamma 0: pure straight-through
    assert not hasattr(BiHalfFunction, "gamma")


def test_bihalf_layer_is_the_identity_in_eval_mode():
    layer = BiHalf(6.0).eval()
    u = torch.randn(5, 4, requires_grad=True)
    out = layer(u)
    assert out is u
    layer.train()
    assert set(layer(u).unique().tolist()) == {-1.0, 1.0}
