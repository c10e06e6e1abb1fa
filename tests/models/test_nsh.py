"""NSH: SoftSort, the L2Norm layer, the loss by hand (both softmax settings), the head,
the config and one training step (methods.md §2, §4.7)."""

import math

import pytest
import torch

from conftest import compose
from models.arch.nsh import NSHHead
from models.layers.l2norm import L2Norm
from models.layers.softsort import soft_sort
from models.loss.nsh import NSHLoss
from utils.errors import ConfigError

# Run-level overrides that keep a test run small (no validation split: select on the last epoch).
SMALL = ["num_workers=0", "progress=false", "val_size=0", "select_on=last"]


# ---------------------------------------------------------------- SoftSort


def test_softsort_by_hand_on_one_row():
    # S = (0.2, 0.9, 0.5), sorted descending sigma = (0.9, 0.5, 0.2), tau = 1, pow = 1:
    # rank 0: |S - 0.9| = (0.7, 0, 0.4) -> softmax(-(0.7, 0, 0.4)) = (e^-0.7, 1, e^-0.4) / Z0
    # rank 1: |S - 0.5| = (0.3, 0.4, 0) -> (e^-0.3, e^-0.4, 1) / Z1
    # rank 2: |S - 0.2| = (0, 0.7, 0.3) -> (1, e^-0.7, e^-0.3) / Z2
    s = torch.tensor([[0.2, 0.9, 0.5]], dtype=torch.float64)
    rows = [
        [math.exp(-0.7), 1.0, math.exp(-0.4)],
        [math.exp(-0.3), math.exp(-0.4), 1.0],
        [1.0, math.exp(-0.7), math.exp(-0.3)],
    ]
    expected = torch.tensor([[v / sum(row) for v in row] for row in rows], dtype=torch.float64)
    p = soft_sort(s, tau=1.0)
    assert p.shape == (1, 3, 3)
    assert torch.allclose(p[0], expected, atol=1e-12)
    assert torch.allclose(p.sum(-1), torch.ones(1, 3, dtype=torch.float64))


def test_softsort_tends_to_the_hard_permutation_as_tau_goes_to_zero():
    s = torch.tensor([[0.2, 0.9, 0.5]], dtype=torch.float64)
    # argsort descending = (1, 2, 0): rank r selects position (1, 2, 0)[r]
    hard = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    errors = [(soft_sort(s, tau)[0] - hard).abs().max().item() for tau in (1.0, 0.1, 0.01, 0.001)]
    assert all(a > b for a, b in zip(errors, errors[1:]))  # strictly closer as tau shrinks
    assert errors[-1] < 1e-12  # e^(-0.3 / 0.001) underflows: exactly the permutation matrix
    # sorting: P @ S gives S in descending order
    assert torch.allclose(soft_sort(s, 1e-3)[0] @ s[0], s[0].sort(descending=True).values)
    # hard=True: the permutation in the forward pass, the soft gradient in the backward pass
    x = s.clone().requires_grad_(True)
    out = soft_sort(x, 1.0, hard=True)
    assert torch.equal(out[0].detach(), hard)
    (out * torch.arange(9.0, dtype=torch.float64).view(1, 3, 3)).sum().backward()
    y = s.clone().requires_grad_(True)
    (soft_sort(y, 1.0) * torch.arange(9.0, dtype=torch.float64).view(1, 3, 3)).sum().backward()
    assert torch.allclose(x.grad, y.grad)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_softsort_gradcheck_float64(power):
    torch.manual_seed(0)
    s = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)  # distinct values (no ties)
    assert torch.autograd.gradcheck(lambda x: soft_sort(x, 0.3, power), (s,))


def test_softsort_rejects_a_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        soft_sort(torch.zeros(1, 3), 0.0)


def test_l2norm_unit_rows_and_zero_row():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = L2Norm()(x)
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(out[1], torch.zeros(2))  # divided by max(0, 1e-12): stays 0, no NaN


# ---------------------------------------------------------------- the loss by hand


def _hand_batch():
    """n = 3 images, K = 4 bits, latents = the unit vectors (z1 = z2 = I_3).

    Codes (+-1, both views equal): c0 = (+,+,+,+), c1 = (+,+,-,-), c2 = (+,+,+,-).
    Dot products: c0.c0 = c1.c1 = c2.c2 = 4, c0.c1 = 0, c0.c2 = 2, c1.c2 = 2, so
    S = dot / (2K) + 1/2 = [[1, .5, .75], [.5, 1, .75], [.75, .75, 1]].
    """
    c = torch.tensor([[1.0, 1, 1, 1], [1, 1, -1, -1], [1, 1, 1, -1]], dtype=torch.float64)
    codes = torch.cat([c, c])
    eye = torch.eye(3, dtype=torch.float64)
    return codes, torch.cat([eye, eye])


def _hand_ranked():
    """C[i, r] = sum_k P[i, r, k] <z1_k, z2_i> = P[i, r, i] (unit latents), softsort tau = 1/4,
    so a gap of 0.25 in S costs a factor e^-1 and 0.5 a factor e^-2 (e1 = e^-1, e2 = e^-2).

    Row 0, S = (1, .5, .75), sigma = (1, .75, .5):
      r0: |S - 1|   = (0, .5, .25)  -> weights (1, e2, e1):  P[0,0,0] = 1 / (1 + e1 + e2)
      r1: |S - .75| = (.25, .25, 0) -> (e1, e1, 1):          P[0,1,0] = e1 / (1 + 2 e1)
      r2: |S - .5|  = (.5, 0, .25)  -> (e2, 1, e1):          P[0,2,0] = e2 / (1 + e1 + e2)
    Row 1 is row 0 with positions 0 and 1 swapped: the same three numbers.
    Row 2, S = (.75, .75, 1), sigma = (1, .75, .75):
      r0: (.25, .25, 0) -> (e1, e1, 1):  P[2,0,2] = 1 / (1 + 2 e1)
      r1 = r2: (0, 0, .25) -> (1, 1, e1): P[2,1,2] = P[2,2,2] = e1 / (2 + e1)
    """
    e1, e2 = math.exp(-1), math.exp(-2)
    row0 = [1 / (1 + e1 + e2), e1 / (1 + 2 * e1), e2 / (1 + e1 + e2)]
    row2 = [1 / (1 + 2 * e1), e1 / (2 + e1), e1 / (2 + e1)]
    return [row0, row0, row2]


def test_nsh_loss_by_hand_single_softmax():
    # m = 2, tau = 0.3: for r in {0, 1} the logits of row i are (C[i, r], C[i, 2]) / tau with the
    # positive first, so CE = -l0 + log(e^l0 + e^l1) = log(1 + exp((C[i,2] - C[i,r]) / tau));
    # nce = sum_r mean_i CE / m. Codes are +-1, so quan = 0.
    codes, latent = _hand_batch()
    ranked = _hand_ranked()
    tau, m = 0.3, 2
    expected = sum(
        sum(math.log1p(math.exp((row[2] - row[r]) / tau)) for row in ranked) / 3 / m
        for r in range(m)
    )
    out = NSHLoss(m=2, quan=1.0, tau=0.3, softsort_tau=0.25, double_softmax=False)(codes, latent)
    assert out["nce"].item() == pytest.approx(expected, abs=1e-12)
    assert out["quan"].item() == 0.0
    assert out["loss"].item() == pytest.approx(expected, abs=1e-12)
    # softsort_tau=None means 1 / K = 1/4 here
    assert NSHLoss(softsort_tau=None)(codes, latent)["nce"].item() == pytest.approx(
        expected, abs=1e-12
    )


def test_nsh_loss_by_hand_double_softmax_reproduces_the_reference():
    # Reference: q = softmax((C[i, r], C[i, 2]) / tau) and then cross-entropy applied to q as if it
    # were logits: CE = -q0 + log(e^q0 + e^q1) = log(1 + exp(q1 - q0)),
    # with q0 = 1 / (1 + exp((C[i,2] - C[i,r]) / tau)), q1 = 1 - q0.
    codes, latent = _hand_batch()
    ranked = _hand_ranked()
    tau, m = 0.3, 2

    def reference_ce(positive, negative):
        q0 = 1 / (1 + math.exp((negative - positive) / tau))
        return math.log1p(math.exp((1 - q0) - q0))

    expected = sum(sum(reference_ce(row[r], row[2]) for row in ranked) / 3 / m for r in range(m))
    out = NSHLoss(m=2, tau=0.3, softsort_tau=0.25, double_softmax=True)(codes, latent)
    assert out["nce"].item() == pytest.approx(expected, abs=1e-12)
    # the double softmax squashes the logits into [0, 1], so q1 - q0 lies in [-1, 1] and each CE
    # (hence nce, an average of m = 2 terms each divided by m) lies in [log(1+e^-1), log(1+e)]
    assert math.log1p(math.exp(-1)) <= out["nce"].item() <= math.log1p(math.e)
    single = NSHLoss(m=2, tau=0.3, softsort_tau=0.25)(codes, latent)["nce"].item()
    assert expected != pytest.approx(single)


def test_nsh_quantisation_term_and_total():
    torch.manual_seed(1)
    codes = torch.tensor([[0.5, -0.25], [1.0, -1.0], [0.0, 0.75], [-0.5, 0.25]] * 2)
    latent = torch.nn.functional.normalize(torch.randn(8, 3), dim=1)
    # (b - sign b)^2 per row: (.25, .5625), (0, 0), (0, .0625) [sign(0) = 0], (.25, .5625)
    expected_quan = 2 * (0.25 + 0.5625 + 0 + 0 + 0 + 0.0625 + 0.25 + 0.5625) / 16
    out = NSHLoss(m=2, quan=3.0)(codes, latent)
    assert out["quan"].item() == pytest.approx(expected_quan, abs=1e-7)
    assert out["loss"].item() == pytest.approx(out["nce"].item() + 3.0 * expected_quan, abs=1e-6)


def test_nsh_loss_gradcheck_and_batch_size_limit():
    torch.manual_seed(2)
    codes = torch.tanh(torch.randn(10, 4, dtype=torch.float64)).requires_grad_(True)
    latent = torch.nn.functional.normalize(torch.randn(10, 3, dtype=torch.float64), dim=1)
    latent.requires_grad_(True)
    loss = NSHLoss(m=2, tau=0.3, softsort_tau=0.5)
    assert torch.autograd.gradcheck(lambda b, z: loss(b, z)["nce"], (codes, latent))
    with pytest.raises(ValueError, match="batch_size"):
        NSHLoss(m=2)(codes[:4].detach(), latent[:4].detach())  # n = 2 images per view, m = 2


def test_nsh_head_shapes_and_ranges():
    head = NSHHead(6, 8, latent_dim=5)
    out = head(torch.randn(4, 6) * 10)
    assert out.codes.shape == (4, 8) and bool((out.codes.abs() <= 1).all())
    assert out.extra["latent"].shape == (4, 5)
    assert torch.allclose(out.extra["latent"].norm(dim=1), torch.ones(4))


# ---------------------------------------------------------------- config and one training step


def test_nsh_config_has_the_reference_defaults():
    cfg = compose(["model=nsh"])
    assert cfg.backbone._target_.endswith("ResNet50") and cfg.backbone.set_eval_mode
    assert (cfg.dataset.name, cfg.dataset.source.protocol) == ("cifar10", "official")
    assert cfg.transforms._target_.endswith("MoCoV2Views")
    assert cfg.scheduler._target_.endswith("ConstantLR")
    assert (cfg.optim.lr, cfg.epochs, cfg.batch_size, cfg.backbone_lr_scale) == (1e-5, 200, 50, 0)
    assert cfg.model.loss.softsort_tau == 1 / 64 and cfg.model.loss.double_softmax is False
    assert compose(["model=nsh", "model.nbit=16"]).model.loss.softsort_tau == 1 / 16
    # the protocol lives in the dataset config, so another dataset composes cleanly
    assert "protocol" not in compose(["model=nsh", "dataset=digits"]).dataset.source


def test_nsh_training_step_on_tiny_gives_a_finite_loss_and_head_gradients(tmp_path):
    from utils.compose.experiment import build_trainer

    cfg = compose(
        ["model=nsh", "backbone=tiny", "dataset=digits", "batch_size=8", "model.nbit=16", *SMALL]
    )
    trainer = build_trainer(cfg, tmp_path)
    trainer.model.train()
    batch = next(iter(trainer.train_loader(0)))
    assert isinstance(batch[0], list) and len(batch[0]) == 2
    terms = trainer.training_step(batch)
    assert set(terms) == {"loss", "nce", "quan"}
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert all(p.grad is None for p in trainer.model.backbone.parameters())
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in trainer.model.head.parameters()
    )


def test_nsh_trainer_rejects_a_batch_not_larger_than_m(tmp_path):
    from utils.compose.experiment import build_trainer

    cfg = compose(["model=nsh", "backbone=tiny", "dataset=digits", "batch_size=2", *SMALL])
    with pytest.raises(ConfigError, match="batch_size must exceed 2"):
        build_trainer(cfg, tmp_path)
