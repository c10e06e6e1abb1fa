"""Unsupervised GreedyHash: the loss by hand, its gradients, the head, the config and one step."""

import pytest
import torch

from conftest import compose
from models.arch.ugh import UGHHead
from models.loss.ugh import UGHLoss, halves_cosine_mse
from utils.errors import ConfigError

# 4 rows -> pairs (0, 2) and (1, 3).
X = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
# t_0 = cos(x0, x2) = 1, t_1 = cos(x1, x3) = 0
H = torch.tensor(
    [[2.0, 1.0, 0.5, 1.0], [1.0, -2.0, 1.0, -0.5], [1.0, 1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]]
)
B = torch.sign(H)
# s_0 = cos(b0, b2) = cos((1,1,1,1), (1,1,1,-1)) = (1 + 1 + 1 - 1) / 4 = 0.5
# s_1 = cos(b1, b3) = cos((1,-1,1,-1), (1,1,-1,-1)) = (1 - 1 - 1 + 1) / 4 = 0
# mse = ((0.5 - 1)^2 + (0 - 0)^2) / 2 = 0.125
# | |h| - 1 |: row 0 (1, 0, 0.5, 0), row 1 (0, 1, 0, 0.5), rows 2-3 zero
# quan = (1 + 0.125 + 1 + 0.125) / 16 = 2.25 / 16 = 0.140625
# loss = 0.125 + 0.1 * 0.140625 = 0.1390625


def test_loss_by_hand():
    terms = UGHLoss(alpha=0.1, pow=3.0)(X, H, B)
    assert set(terms) == {"loss", "mse", "quan"}
    assert terms["mse"].item() == pytest.approx(0.125, abs=1e-7)
    assert terms["quan"].item() == pytest.approx(0.140625, abs=1e-7)
    assert terms["loss"].item() == pytest.approx(0.1390625, abs=1e-7)
    # pow 2 instead: (1 + 0.25 + 1 + 0.25) / 16 = 0.15625
    assert UGHLoss(alpha=1.0, pow=2.0)(X, H, B)["quan"].item() == pytest.approx(0.15625)


def test_odd_row_is_dropped_from_the_pairs_but_not_from_the_quantisation():
    x5 = torch.cat([X, torch.tensor([[5.0, 5.0]])])
    h5 = torch.cat([H, torch.tensor([[3.0, 1.0, 1.0, 1.0]])])  # | |h| - 1 |^3 = (8, 0, 0, 0)
    terms = UGHLoss()(x5, h5, torch.sign(h5))
    assert terms["mse"].item() == pytest.approx(0.125, abs=1e-7)
    assert terms["quan"].item() == pytest.approx((2.25 + 8) / 20, abs=1e-7)
    with pytest.raises(ValueError, match="at least two rows"):
        UGHLoss()(X[:1], H[:1], B[:1])


def test_loss_is_invariant_to_swapping_the_halves():
    torch.manual_seed(0)
    x, h = torch.rand(6, 5), torch.randn(6, 4)
    swap = torch.tensor([3, 4, 5, 0, 1, 2])
    assert UGHLoss()(x[swap], h[swap], torch.sign(h[swap]))["loss"].item() == pytest.approx(
        UGHLoss()(x, h, torch.sign(h))["loss"].item(), abs=1e-7
    )


def test_loss_gradcheck_in_float64_and_no_gradient_to_features():
    torch.manual_seed(1)
    x = torch.rand(6, 5, dtype=torch.float64, requires_grad=True)
    h = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)  # continuous stand-in for b
    loss = UGHLoss()
    assert torch.autograd.gradcheck(lambda hh, bb: loss(x, hh, bb)["loss"], (h, b))
    loss(x, h, b)["loss"].backward()
    assert x.grad is None  # the feature cosines are a target (stop-gradient)


def test_gradient_through_the_head_is_straight_through():
    # dL/dh = dL/db (identity through sign) + alpha * d quan / dh
    torch.manual_seed(2)
    head = UGHHead(5, 4).double().train()
    x = torch.rand(6, 5, dtype=torch.float64)
    out = head(x)
    h = out.codes.detach().requires_grad_(True)
    b = torch.sign(h).detach().requires_grad_(True)
    manual = UGHLoss()(x, h, b)["loss"]
    grad_h, grad_b = torch.autograd.grad(manual, (h, b))
    (through_head,) = torch.autograd.grad(
        UGHLoss()(x, out.codes, out.extra["binary"])["loss"], out.codes
    )
    assert torch.allclose(through_head, grad_h + grad_b, atol=1e-12)


def test_head_shapes_and_sign_in_train_and_eval():
    head = UGHHead(10, 16)
    x = torch.randn(4, 10)
    for mode in (True, False):
        out = head.train(mode)(x)
        assert out.codes.shape == (4, 16) and out.features is x
        assert torch.equal(out.extra["binary"], torch.sign(out.codes))
    assert halves_cosine_mse(x, torch.sign(head(x).codes)).dim() == 0


def test_config_builds_and_one_training_step_trains_the_head_only(tmp_path):
    from utils.compose import build
    from utils.compose.experiment import build_trainer

    cfg = compose(["model=ugh", "backbone=tiny", "val_size=0", "select_on=last"])
    assert (cfg.model.loss.alpha, cfg.model.loss.pow, cfg.backbone_lr_scale) == (0.1, 3.0, 0)
    assert cfg.transforms._target_.endswith("NoAugmentation")
    assert isinstance(build.build_model(cfg).head, UGHHead)
    assert isinstance(build.build_criterion(cfg), UGHLoss)
    trainer = build_trainer(cfg, tmp_path)
    trainer.model.train()
    terms = trainer.training_step((torch.rand(8, 1, 8, 8), torch.zeros(8), torch.arange(8)))
    assert set(terms) == {"loss", "mse", "quan"} and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert all(p.grad is None for p in trainer.model.backbone.parameters())
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in trainer.model.head.parameters()
    )


def test_batch_of_one_is_rejected(tmp_path):
    from utils.compose.experiment import build_trainer

    cfg = compose(["model=ugh", "backbone=tiny", "val_size=0", "select_on=last", "batch_size=1"])
    with pytest.raises(ConfigError, match="batch_size must be at least 2"):
        build_trainer(cfg, tmp_path)


def test_a_run_saved_under_the_trainers_old_name_still_loads():
    # config.yaml of runs saved before the rename: model.trainer = models.trainers.ugh.UGHTrainer
    from hydra.utils import get_class

    from models.trainers.paired_codes import PairedCodesTrainer

    assert get_class("models.trainers.ugh.UGHTrainer") is PairedCodesTrainer
    assert get_class(compose(["model=ugh"]).model.trainer) is PairedCodesTrainer
