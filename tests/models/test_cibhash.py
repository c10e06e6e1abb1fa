"""CIBHash: the loss by hand (NT-Xent + Bernoulli KL), its properties, the head, config, step."""

import math

import pytest
import torch

from conftest import compose
from models.arch.cibhash import CIBHashHead
from models.loss.cibhash import CIBHashLoss, bernoulli_kl
from utils.errors import ConfigError

TAU = 0.3
# Two images, 4 bits. a = (1,1,1,1), b = (1,1,-1,-1), b' = (1,1,-1,1):
# cos(a, b) = 0, cos(a, b') = 2/4 = 0.5, cos(b, b') = 2/4 = 0.5.
Z_I = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, -1.0, -1.0]])  # view i: a, b
Z_J = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, -1.0, 1.0]])  # view j: a, b'
# Z = [a, b, a, b']; positives 0<->2, 1<->3.
# anchor 0 (a):  pos a (1);    others b (0), b' (0.5)  -> -1/tau + log(e^{1/tau} + 1 + e^{0.5/tau})
# anchor 1 (b):  pos b' (0.5); others a (0), a (0)     -> -0.5/tau + log(e^{0.5/tau} + 2)
# anchor 2 (a):  same as anchor 0
# anchor 3 (b'): pos b (0.5);  others a (0.5), a (0.5) -> -0.5/tau + log(3 e^{0.5/tau}) = log 3
L0 = -1 / TAU + math.log(math.exp(1 / TAU) + 1 + math.exp(0.5 / TAU))
L1 = -0.5 / TAU + math.log(math.exp(0.5 / TAU) + 2)
CONTRAST = (2 * L0 + L1 + math.log(3)) / 4

P_I = torch.full((2, 4), 0.5)
P_J = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.8, 0.5, 0.5, 0.5]])
# Only bit 0 of row 1 differs: KL(0.5 || 0.8) = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2) = ln 1.25,
# KL(0.8 || 0.5) = 0.8 ln 1.6 + 0.2 ln 0.4; each summed over bits, averaged over the 2 rows.
KL_IJ = math.log(1.25) / 2
KL_JI = (0.8 * math.log(1.6) + 0.2 * math.log(0.4)) / 2
KL = 0.5 * (KL_IJ + KL_JI)  # = (0.223144 + 0.192745) / 4 = 0.103972


def test_loss_by_hand():
    terms = CIBHashLoss(temperature=TAU, beta=0.001)(P_I, P_J, Z_I, Z_J)
    assert set(terms) == {"loss", "contrast", "kl"}
    assert terms["contrast"].item() == pytest.approx(CONTRAST, abs=1e-5)
    assert terms["kl"].item() == pytest.approx(KL, abs=1e-6)
    assert KL == pytest.approx(0.103972, abs=1e-6)
    assert terms["loss"].item() == pytest.approx(CONTRAST + 0.001 * KL, abs=1e-5)
    assert bernoulli_kl(P_I, P_J).item() == pytest.approx(KL_IJ, abs=1e-6)


def test_kl_is_zero_for_equal_probabilities_and_positive_otherwise():
    torch.manual_seed(0)
    p = torch.rand(5, 4)
    assert CIBHashLoss()(p, p.clone(), torch.randn(5, 4), torch.randn(5, 4))[
        "kl"
    ].item() == pytest.approx(0.0, abs=1e-6)
    assert CIBHashLoss()(p, torch.rand(5, 4), torch.randn(5, 4), torch.randn(5, 4))["kl"] > 0


def test_loss_is_symmetric_in_the_views_and_invariant_to_batch_order():
    torch.manual_seed(1)
    p_i, p_j = torch.rand(6, 8), torch.rand(6, 8)
    z_i, z_j = torch.sign(p_i - 0.5), torch.sign(p_j - 0.5)
    loss = CIBHashLoss()
    base = loss(p_i, p_j, z_i, z_j)
    swapped = loss(p_j, p_i, z_j, z_i)
    perm = torch.randperm(6)
    permuted = loss(p_i[perm], p_j[perm], z_i[perm], z_j[perm])
    for name in ("loss", "contrast", "kl"):
        assert swapped[name].item() == pytest.approx(base[name].item(), abs=1e-6)
        assert permuted[name].item() == pytest.approx(base[name].item(), abs=1e-6)


def test_kl_target_is_detached():
    # d kl / d p_i = 1/2 d KL(p_i || c) / d p_i with c = p_j constant (the other KL's target side
    # p_i is detached): per entry 1/2 (1/B) [log(p/(1-p)) - log(q/(1-q))] (up to eps).
    p_i = torch.tensor([[0.3, 0.6]], dtype=torch.float64, requires_grad=True)
    p_j = torch.tensor([[0.5, 0.2]], dtype=torch.float64, requires_grad=True)
    z = torch.ones(1, 2, dtype=torch.float64)
    kl = CIBHashLoss()(p_i, p_j, z, z)["kl"]
    grad_i, grad_j = torch.autograd.grad(kl, (p_i, p_j))
    logit = lambda v: math.log(v / (1 - v))  # noqa: E731
    assert grad_i.flatten().tolist() == pytest.approx(
        [0.5 * (logit(0.3) - logit(0.5)), 0.5 * (logit(0.6) - logit(0.2))], abs=1e-6
    )
    assert grad_j.flatten().tolist() == pytest.approx(
        [0.5 * (logit(0.5) - logit(0.3)), 0.5 * (logit(0.2) - logit(0.6))], abs=1e-6
    )


def test_loss_gradcheck_in_float64():
    torch.manual_seed(2)
    p_i = torch.rand(4, 3, dtype=torch.float64).mul(0.8).add(0.1).requires_grad_(True)
    p_j = torch.rand(4, 3, dtype=torch.float64).mul(0.8).add(0.1).requires_grad_(True)
    z_i = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z_j = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = CIBHashLoss(beta=0.5)  # a visible KL weight
    # The total's KL detaches its targets, which finite differences cannot see; so gradcheck the
    # total in the codes, and the one-sided Bernoulli KL in p with a constant target.
    assert torch.autograd.gradcheck(lambda a, b: loss(p_i, p_j, a, b)["loss"], (z_i, z_j))
    target = p_j.detach()
    assert torch.autograd.gradcheck(lambda a: bernoulli_kl(a, target), (p_i,))


def _head_with_fixed_logits(logits: list[float]) -> CIBHashHead:
    head = CIBHashHead(3, len(logits), hidden=5)
    with torch.no_grad():
        head.encoder[2].weight.zero_()
        head.encoder[2].bias.copy_(torch.tensor(logits))
    return head


def test_head_codes_in_training_and_eval():
    # logits (0, ln 3, -ln 3, 2): p = (0.5, 0.75, 0.25, sigmoid 2)
    logits = [0.0, math.log(3), -math.log(3), 2.0]
    head = _head_with_fixed_logits(logits)
    x = torch.rand(2, 3)
    out = head.train()(x)
    assert out.extra["prob"][0].tolist() == pytest.approx([0.5, 0.75, 0.25, 1 / (1 + math.exp(-2))])
    assert out.codes[0].tolist() == [0.0, 1.0, -1.0, 1.0]  # sign(p - 0.5); exactly 0.5 -> 0
    # straight-through: d z / d logit = p (1 - p) = (0.25, 0.1875, 0.1875, s(1 - s))
    out.codes.sum().backward()
    s = 1 / (1 + math.exp(-2))
    assert head.encoder[2].bias.grad.tolist() == pytest.approx(
        [2 * 0.25, 2 * 0.1875, 2 * 0.1875, 2 * s * (1 - s)], abs=1e-6
    )  # 2 rows
    out = head.eval()(x)
    assert out.codes[0].tolist() == pytest.approx(logits)  # eval codes are the logits


def test_eval_code_signs_equal_the_training_codes():
    torch.manual_seed(3)
    head = CIBHashHead(6, 16)
    x = torch.randn(20, 6)
    evaluated = head.eval()(x)
    trained = head.train()(x)
    assert torch.equal(torch.sign(evaluated.codes), torch.sign(evaluated.extra["prob"] - 0.5))
    assert torch.equal(torch.sign(evaluated.codes), trained.codes)
    assert evaluated.codes.shape == (20, 16) and head.encoder[0].out_features == 1024


def test_config_builds_and_one_training_step_trains_the_head_only(tmp_path):
    from utils.compose import build
    from utils.compose.experiment import build_trainer

    cfg = compose(["model=cibhash", "backbone=tiny", "val_size=0", "select_on=last"])
    assert (cfg.model.loss.temperature, cfg.model.loss.beta, cfg.backbone_lr_scale) == (
        0.3,
        0.001,
        0,
    )
    assert isinstance(build.build_model(cfg).head, CIBHashHead)
    assert isinstance(build.build_criterion(cfg), CIBHashLoss)
    trainer = build_trainer(cfg, tmp_path)
    assert trainer.views == 2 and trainer.train_transform.views == 2
    trainer.model.train()
    views = [torch.rand(8, 1, 8, 8), torch.rand(8, 1, 8, 8)]
    terms = trainer.training_step((views, torch.zeros(8), torch.arange(8)))
    assert set(terms) == {"loss", "contrast", "kl"} and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert all(p.grad is None for p in trainer.model.backbone.parameters())
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in trainer.model.head.parameters()
    )


def test_concatenated_forward_equals_one_forward_per_view(tmp_path):
    from utils.compose.experiment import build_trainer

    cfg = compose(["model=cibhash", "backbone=tiny", "val_size=0", "select_on=last"])
    trainer = build_trainer(cfg, tmp_path)
    trainer.model.train()
    torch.manual_seed(4)
    v_i, v_j = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    terms = trainer.training_step(([v_i, v_j], torch.zeros(4), torch.arange(4)))
    out_i, out_j = trainer.model(v_i), trainer.model(v_j)
    separate = trainer.criterion(out_i.extra["prob"], out_j.extra["prob"], out_i.codes, out_j.codes)
    assert terms["loss"].item() == pytest.approx(separate["loss"].item(), abs=1e-6)


def test_one_view_transform_is_rejected(tmp_path):
    from utils.compose.experiment import build_trainer

    cfg = compose(
        [
            "model=cibhash",
            "backbone=tiny",
            "transforms=no_augmentation",
            "val_size=0",
            "select_on=last",
        ]
    )
    with pytest.raises(ConfigError, match="2 view"):
        build_trainer(cfg, tmp_path)
