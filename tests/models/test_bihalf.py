"""BiHalf: the loss by hand, the head in train and eval mode, the config and one step."""

import pytest
import torch

from conftest import compose
from models.arch.bihalf import BiHalfHead
from models.loss.bihalf import BiHalfLoss
from utils.errors import ConfigError


def test_loss_by_hand_is_the_mse_term_only():
    # pairs (0, 2), (1, 3); t = (cos(x0, x2), cos(x1, x3)) = (1, 0)
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor(
        [
            [1.0, 1.0, 1.0, 1.0],
            [1.0, -1.0, 1.0, -1.0],
            [1.0, 1.0, 1.0, -1.0],
            [1.0, 1.0, -1.0, -1.0],
        ]
    )
    # s = (2/4, 0/4) = (0.5, 0); mse = ((0.5 - 1)^2 + 0^2) / 2 = 0.125
    h = 10 * torch.randn(4, 4)  # no quantisation term: h does not matter
    terms = BiHalfLoss()(x, h, b)
    assert set(terms) == {"loss", "mse"}
    assert terms["mse"].item() == pytest.approx(0.125, abs=1e-7)
    assert terms["loss"].item() == pytest.approx(0.125, abs=1e-7)
    # second example: b2 = -b0 -> s_0 = -1, t_0 = 1 -> (-2)^2; s_1 = 0 -> mse = 4 / 2 = 2
    b2 = b.clone()
    b2[2] = -b[0]
    assert BiHalfLoss()(x, h, b2)["loss"].item() == pytest.approx(2.0, abs=1e-7)


def test_loss_gradcheck_in_float64():
    torch.manual_seed(0)
    x = torch.rand(5, 3, dtype=torch.float64)
    b = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    h = torch.randn(5, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda bb: BiHalfLoss()(x, h, bb)["loss"], (b,))


def test_head_binary_is_bihalf_in_training_and_h_in_eval():
    torch.manual_seed(1)
    head = BiHalfHead(6, 8, gamma=6.0)
    x = torch.rand(10, 6)
    out = head.train()(x)
    assert out.codes.shape == (10, 8) and out.features is x
    assert (out.extra["binary"] == 1).sum(dim=0).tolist() == [5] * 8  # exactly half per bit
    out = head.eval()(x)
    assert torch.equal(out.extra["binary"], out.codes)  # eval: identity, codes = h
    with pytest.raises(ValueError, match="at least two rows per bit"):
        head.train()(x[:1])
    assert head.eval()(x[:1]).codes.shape == (1, 8)  # a single eval row is fine


def test_head_gradient_adds_the_gamma_term():
    # Through the head: dL/dh = dL/db + gamma / (N K) (h - b).
    torch.manual_seed(2)
    head = BiHalfHead(3, 2, gamma=6.0).double().train()
    x = torch.rand(4, 3, dtype=torch.float64)
    out = head(x)
    g = torch.randn(4, 2, dtype=torch.float64)
    (grad_h,) = torch.autograd.grad((out.extra["binary"] * g).sum(), out.codes)
    expected = g + 6.0 / (4 * 2) * (out.codes - out.extra["binary"]).detach()
    assert torch.allclose(grad_h, expected, atol=1e-12)


def test_config_builds_and_one_training_step_trains_the_head_only(tmp_path):
    from utils.compose import build
    from utils.compose.experiment import build_trainer

    cfg = compose(["model=bihalf", "backbone=tiny", "val_size=0", "select_on=last"])
    assert (cfg.model.head.gamma, cfg.backbone_lr_scale) == (6.0, 0)
    assert cfg.model.trainer == compose(["model=ugh"]).model.trainer  # one shared trainer
    assert cfg.transforms._target_.endswith("NoAugmentation")
    model = build.build_model(cfg)
    assert isinstance(model.head, BiHalfHead) and model.head.bihalf.gamma == 6.0
    assert isinstance(build.build_criterion(cfg), BiHalfLoss)
    trainer = build_trainer(cfg, tmp_path)
    trainer.model.train()
    terms = trainer.training_step((torch.rand(8, 1, 8, 8), torch.zeros(8), torch.arange(8)))
    assert set(terms) == {"loss", "mse"} and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert all(p.grad is None for p in trainer.model.backbone.parameters())
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in trainer.model.head.parameters()
    )


def test_batch_of_one_is_rejected_with_a_clear_message(tmp_path):
    from utils.compose.experiment import build_trainer

    cfg = compose(["model=bihalf", "backbone=tiny", "val_size=0", "select_on=last", "batch_size=1"])
    with pytest.raises(ConfigError, match="bi-half needs at least two rows per bit"):
        build_trainer(cfg, tmp_path)
