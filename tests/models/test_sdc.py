"""SDC: calibration targets, pairing, the loss on hand-built batches, gradients, the head."""

import math

import pytest
import torch

from models.arch.base import HashModel
from models.arch.sdc import SDCHead
from models.loss.ntxent import nt_xent
from models.loss.sdc import SDCLoss, calibration_targets, pair_indices


def test_targets_n32_match_scipy_values_of_methods_md():
    c = calibration_targets(32)
    expected_first = [-0.620733, -0.505347, -0.436251, -0.383285, -0.338874]
    assert c[:5].tolist() == pytest.approx(expected_first, abs=2e-6)
    assert c[-1].item() == pytest.approx(0.620733, abs=2e-6)
    assert torch.allclose(c, -c.flip(0), atol=1e-12)  # antisymmetric -> mean 0
    assert bool((c[1:] > c[:-1]).all())


def test_targets_n64_and_clamp():
    c = calibration_targets(64)
    assert c[:5].tolist() == pytest.approx(
        [-0.676861, -0.582496, -0.527286, -0.485751, -0.451524], abs=2e-6
    )
    assert c[-1].item() == pytest.approx(0.676861, abs=2e-6)
    clamped = calibration_targets(64, clamp_at_zero=True)
    assert int((clamped == 0).sum()) == 32
    assert torch.equal(clamped[32:], c[32:])


def test_target_of_n1_is_the_median_and_beta11_is_uniform():
    assert calibration_targets(1).item() == pytest.approx(0.0, abs=1e-12)
    # Beta(1, 1) is uniform: c_k = 2 (2k - 1) / (2n) - 1
    n = 4
    assert calibration_targets(n, 1.0, 1.0).tolist() == pytest.approx(
        [2 * (2 * k - 1) / (2 * n) - 1 for k in range(1, n + 1)]
    )


def test_pairings():
    a, b = pair_indices(8, "halves")
    assert a.tolist() == [0, 1, 2, 3] and b.tolist() == [4, 5, 6, 7]
    a, b = pair_indices(8, "four_blocks")  # [view1 rows 0-3; view2 rows 4-7], q = 2
    assert a.tolist() == [0, 1, 4, 5] and b.tolist() == [2, 3, 6, 7]
    # pairs never cross the view boundary at row 4
    assert all((x < 4) == (y < 4) for x, y in zip(a.tolist(), b.tolist()))
    with pytest.raises(ValueError, match="pairing"):
        pair_indices(8, "random")


def test_loss_on_a_hand_built_batch():
    # 4 rows -> 2 pairs: (0, 2) and (1, 3). Feature cosines: pair 0 -> 1.0, pair 1 -> 0.0,
    # so sorted ascending: pair 1 first, then pair 0.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # codes: pair 0 = (v0, v2) cos = 0; pair 1 = (v1, v3) cos = -1 (v3 = -v1)
    v = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, -1.0]])
    loss = SDCLoss()(x, v)
    c = calibration_targets(2)  # Beta(5,5) at quantiles 1/4 and 3/4, mapped to [-1, 1]
    expected_rec = (abs(-1.0 - c[0].item()) + abs(0.0 - c[1].item())) / 2
    # quantisation: cos(v, sign v): rows 0,2 -> 1 - 1/1... v0 = (1,0), sign = (1,0): cos 1;
    # v1 = (1,1) sign (1,1): 1; v2: 1; v3: 1 -> quan = 0
    assert loss["rec"].item() == pytest.approx(expected_rec, abs=1e-6)
    assert loss["quan"].item() == pytest.approx(0.0, abs=1e-6)
    assert loss["loss"].item() == pytest.approx(expected_rec, abs=1e-6)


def test_quantisation_term_by_hand():
    x = torch.eye(2)
    v = torch.tensor([[0.5, 0.5], [3.0, -4.0]])
    # cos(v0, sign v0) = 1; cos(v1, (1, -1)) = (3 + 4) / (5 * sqrt 2)
    expected = (0 + (1 - 7 / (5 * math.sqrt(2)))) / 2
    assert SDCLoss(quan_type="cs")(x, v)["quan"].item() == pytest.approx(expected, abs=1e-6)
    assert SDCLoss(quan_type="l1")(x, v)["quan"].item() == pytest.approx(
        (0.5 + 0.5 + 2 + 3) / 4, abs=1e-6
    )


def test_odd_row_dropped_and_l2_hinge_variants():
    torch.manual_seed(0)
    x, v = torch.randn(7, 5), torch.randn(7, 3)
    assert SDCLoss()(x, v)["loss"].item() == pytest.approx(SDCLoss()(x[:6], v[:6])["loss"].item())
    for kind in ("l2", "hinge"):
        assert torch.isfinite(SDCLoss(rec_type=kind)(x, v)["loss"])
    with pytest.raises(ValueError):
        SDCLoss()(x[:1], v[:1])


def test_loss_depends_on_features_only_through_their_order():
    torch.manual_seed(1)
    x, v = torch.rand(16, 6), torch.randn(16, 4)
    base = SDCLoss()(x, v)["loss"]
    # a strictly increasing map of all cosines keeps the order: scale features per row
    scaled = x * torch.rand(16, 1).add(0.5)
    assert SDCLoss()(scaled, v)["loss"].item() == pytest.approx(base.item(), abs=1e-6)


def test_contrastive_variant_adds_nt_xent_between_views():
    torch.manual_seed(2)
    x, v = torch.rand(8, 6), torch.randn(8, 4)
    plain = SDCLoss(pairing="four_blocks", ortho_constraint=True)(x, v)
    with_cont = SDCLoss(pairing="four_blocks", ortho_constraint=True, temperature=0.3)(x, v)
    expected = nt_xent(v[:4], v[4:], 0.3)
    assert with_cont["cont"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert with_cont["loss"].item() == pytest.approx(
        plain["loss"].item() + expected.item(), abs=1e-5
    )


def test_nt_xent_by_hand_and_symmetry():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    # anchor 0: positive row 2 (cos 1), others rows 1 (cos 0), 3 (cos 0)
    per_anchor = -1 / tau + math.log(math.exp(1 / tau) + 2 * math.exp(0))
    assert nt_xent(z1, z2, tau).item() == pytest.approx(per_anchor, abs=1e-6)
    torch.manual_seed(3)
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    assert nt_xent(a, b, 0.3).item() == pytest.approx(nt_xent(b, a, 0.3).item(), abs=1e-6)
    perm = torch.randperm(5)
    assert nt_xent(a[perm], b[perm], 0.3).item() == pytest.approx(
        nt_xent(a, b, 0.3).item(), abs=1e-6
    )


def test_loss_gradient_matches_finite_differences():
    torch.manual_seed(4)
    x = torch.rand(6, 5, dtype=torch.float64)
    v = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    loss = SDCLoss(rec_type="l2")
    assert torch.autograd.gradcheck(lambda codes: loss(x, codes)["rec"], (v,))


def test_gradients_reach_only_the_head_when_frozen():
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU())
    backbone.features_size = 8
    model = HashModel(backbone, SDCHead(8, 4), frozen_backbone=True)
    model.train()
    out = model(torch.rand(6, 3, 2, 2))
    SDCLoss()(out.features, out.codes)["loss"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    assert not model.backbone.training and model.head.training


def test_head_shapes_and_hidden_default():
    head = SDCHead(10, 16)
    assert head.hash_fc[0].out_features == 10  # hidden = D by default
    out = head(torch.randn(4, 10))
    assert out.codes.shape == (4, 16) and out.features.shape == (4, 10)
    assert SDCHead(10, 16, hidden=32).hash_fc[0].out_features == 32


def _hand_batch():
    """4 rows, pairs (0, 2) and (1, 3). Feature cosines: pair 0 -> 1, pair 1 -> 0, so the sorted
    order is (pair 1, pair 0). Unit codes without zeros: cos(v0, v2) = 0.8, cos(v1, v3) = -0.936."""
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.6, 0.8], [0.6, -0.8], [0.96, 0.28], [-0.28, 0.96]], dtype=torch.float64)
    return x, v


def _beta_targets_by_scipy(n, a=5.0, b=5.0):
    from scipy.stats import beta

    return [2 * beta.ppf((2 * k - 1) / (2 * n), a, b) - 1 for k in range(1, n + 1)]


@pytest.mark.parametrize("rec_type", ["l1", "l2", "hinge"])
def test_every_calibration_variant_by_hand(rec_type):
    x, v = _hand_batch()
    c1, c2 = _beta_targets_by_scipy(2)
    gaps = [-0.936 - c1, 0.8 - c2]  # one below its target, one above
    assert gaps[0] < 0 < gaps[1]
    expected = {
        "l1": (abs(gaps[0]) + abs(gaps[1])) / 2,
        "l2": (gaps[0] ** 2 + gaps[1] ** 2) / 2,
        # one-sided: only similarities above their target are pulled down (methods.md)
        "hinge": (max(gaps[0], 0) + max(gaps[1], 0)) / 2,
    }[rec_type]
    assert expected > 0
    rec = SDCLoss(rec_type=rec_type)(x, v)["rec"].item()
    assert rec == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "quan_type, expected",
    [
        # cos(v, sign v) = (|v_1| + |v_2|) / sqrt 2 for unit v: 1.4 / sqrt 2 twice, 1.24 / sqrt 2 twice
        ("cs", 1 - (1.4 + 1.4 + 1.24 + 1.24) / (4 * math.sqrt(2))),
        # |v - sign v| elementwise: 0.4 0.2 | 0.4 0.2 | 0.04 0.72 | 0.72 0.04
        ("l1", (0.4 + 0.2 + 0.4 + 0.2 + 0.04 + 0.72 + 0.72 + 0.04) / 8),
        ("l2", (0.16 + 0.04 + 0.16 + 0.04 + 0.0016 + 0.5184 + 0.5184 + 0.0016) / 8),
        ("p3", (0.064 + 0.008 + 0.064 + 0.008 + 0.000064 + 0.373248 + 0.373248 + 0.000064) / 8),
    ],
)
def test_every_quantisation_variant_by_hand(quan_type, expected):
    x, v = _hand_batch()
    assert SDCLoss(quan_type=quan_type)(x, v)["quan"].item() == pytest.approx(expected, abs=1e-9)


def test_weighted_total_with_every_term_non_zero():
    x, v = _hand_batch()
    c1, c2 = _beta_targets_by_scipy(2)
    rec = (abs(-0.936 - c1) + abs(0.8 - c2)) / 2
    quan = 1 - (1.4 + 1.4 + 1.24 + 1.24) / (4 * math.sqrt(2))
    # NT-Xent between views v[:2] and v[2:], tau = 0.5, by a double loop over the 4 rows
    tau, rows = 0.5, v.tolist()
    unit = [[a / math.hypot(a, b), b / math.hypot(a, b)] for a, b in rows]
    sim = [[(p[0] * q[0] + p[1] * q[1]) / tau for q in unit] for p in unit]
    cont = (
        sum(
            -sim[i][(i + 2) % 4] + math.log(sum(math.exp(sim[i][k]) for k in range(4) if k != i))
            for i in range(4)
        )
        / 4
    )
    terms = SDCLoss(rec=2.0, quan=3.0, cont=0.25, temperature=tau)(x, v)
    assert min(rec, quan, cont) > 0
    assert terms["rec"].item() == pytest.approx(rec, abs=1e-9)
    assert terms["quan"].item() == pytest.approx(quan, abs=1e-9)
    assert terms["cont"].item() == pytest.approx(cont, abs=1e-9)
    assert terms["loss"].item() == pytest.approx(2 * rec + 3 * quan + 0.25 * cont, abs=1e-9)
