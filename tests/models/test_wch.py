"""WCH: cross-attention, the chunked max-cosine, the weight matrix and its column-division quirk,
the straight-through hash, the loss by hand, the config and one training step (methods.md §4.6)."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import compose
from models.arch.wch import (
    WCHHead,
    cross_attention,
    mean_max_cosine,
    weight_matrix,
)
from models.layers.sign import sign_ste
from models.loss.wch import WCHLoss
from utils.errors import ConfigError

SMALL = ["num_workers=0", "progress=false", "val_size=0", "select_on=last"]


# ---------------------------------------------------------------- head pieces


def test_wch_cross_attention_matches_the_definition():
    torch.manual_seed(0)
    x1, x2 = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    x1_mixed, x2_mixed = cross_attention(x1, x2, temperature=0.5)
    for n in range(2):
        s = (
            torch.tensor(
                [
                    [F.cosine_similarity(x1[n, i], x2[n, j], dim=0).item() for j in range(3)]
                    for i in range(3)
                ],
                dtype=torch.float64,
            )
            / 0.5
        )
        for j in range(3):  # X1'[n, j] = sum_i softmax_i(S[i, j]) X1[n, i]
            w = torch.softmax(s[:, j], dim=0)
            assert torch.allclose(x1_mixed[n, j], (w[:, None] * x1[n]).sum(0), atol=1e-12)
        for i in range(3):  # X2'[n, i] = sum_j softmax_j(S[i, j]) X2[n, j]
            w = torch.softmax(s[i, :], dim=0)
            assert torch.allclose(x2_mixed[n, i], (w[:, None] * x2[n]).sum(0), atol=1e-12)


def test_wch_chunked_max_cosine_equals_the_unchunked_computation():
    torch.manual_seed(1)
    a = torch.randn(5, 6, 4, dtype=torch.float64)
    b = torch.randn(5, 7, 4, dtype=torch.float64)  # P = 6, Q = 7: the axes cannot be confused
    # brute force: W0[n, m] = (1/P) sum_i max_j cos(a[n, i], b[m, j])
    cos = F.cosine_similarity(a[:, None, :, None, :], b[None, :, None, :, :], dim=-1)  # (5,5,6,7)
    expected = cos.amax(dim=3).mean(dim=2)
    assert (
        abs(
            expected[1, 3].item()
            - sum(
                max(F.cosine_similarity(a[1, i], b[3, j], dim=0).item() for j in range(7))
                for i in range(6)
            )
            / 6
        )
        < 1e-12
    )
    for chunk in (None, 1, 2, 3, 5, 100):
        assert torch.allclose(mean_max_cosine(a, b, chunk), expected, atol=1e-12), chunk
    # the head picks the chunk from its element budget: 13 images at B = 64, P = 196, 2^25
    assert WCHHead(768, 64).chunk_size(64, 196, 196) == 13
    tiny_budget = WCHHead(4, 8, max_chunk_elements=1).chunk_size(5, 6, 7)
    assert tiny_budget == 1
    # gradients agree as well
    a1 = a.clone().requires_grad_(True)
    a2 = a.clone().requires_grad_(True)
    mean_max_cosine(a1, b, 2).sum().backward()
    mean_max_cosine(a2, b, None).sum().backward()
    assert torch.allclose(a1.grad, a2.grad, atol=1e-12)


def test_wch_max_cosine_keeps_no_cosine_block_for_the_backward_pass():
    # With gradients recorded, autograd must not keep any (chunk, Nb, P, Q) block of cosines
    # (max(dim) keeps argmax indices; amax would keep its input), so chunking bounds memory.
    largest = [0]

    def pack(tensor):
        largest[0] = max(largest[0], tensor.numel())
        return tensor

    a = torch.randn(16, 20, 4, requires_grad=True)
    b = torch.randn(16, 20, 4)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        mean_max_cosine(a, b, chunk_size=2)
    assert 0 < largest[0] < 2 * 16 * 20 * 20


def test_wch_weight_matrix_column_division_quirk_by_hand():
    # W0 = [[1, 0], [.5, .5]], tau_w = 0.2:
    # Pi row 0 = softmax(5, 0) = (1, e^-5) / (1 + e^-5); Pi row 1 = softmax(2.5, 2.5) = (.5, .5).
    # weighted[n, m] = Pi[n, m] / Pi[m, m] (column m divided by row m's diagonal):
    #   weighted[0, 1] = Pi[0, 1] / Pi[1, 1] = 2 e^-5 / (1 + e^-5)
    #   weighted[1, 0] = Pi[1, 0] / Pi[0, 0] = .5 (1 + e^-5)
    # (dividing each row by its own diagonal would give e^-5 and 1 instead)
    e5 = math.exp(-5)
    w = weight_matrix(torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64), 0.2)
    assert w[0, 1].item() == pytest.approx(2 * e5 / (1 + e5), rel=1e-12)
    assert w[1, 0].item() == pytest.approx(0.5 * (1 + e5), rel=1e-12)
    assert w[0, 1].item() != pytest.approx(e5) and w[1, 0].item() != pytest.approx(1.0)
    assert w[0, 0].item() == 1.0 and w[1, 1].item() == 1.0


def test_wch_weight_matrix_diagonal_is_exactly_one():
    torch.manual_seed(2)
    for dtype in (torch.float32, torch.float64):
        w = weight_matrix(torch.rand(7, 7, dtype=dtype) * 2 - 1, 0.2)
        assert torch.equal(w.diagonal(), torch.ones(7, dtype=dtype))


def test_wch_straight_through_sign():
    a = torch.tensor([[-0.7, 0.2], [0.9, -0.1]], requires_grad=True)
    h = sign_ste(a)  # the straight-through sign of the WCH head
    assert h.tolist() == [[-1.0, 1.0], [1.0, -1.0]]
    g = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    h.backward(g)
    assert torch.equal(a.grad, g)  # identity to a (and on through tanh in the head)


def test_wch_head_init_eval_codes_and_train_forward_shapes():
    torch.manual_seed(3)
    head = WCHHead(in_features=32, nbit=8, token_dim=16)
    assert head.fc.in_features == 16 and head.b.out_features == 8
    assert head.fc.weight.abs().max() <= math.sqrt(6 / 16)  # Kaiming-uniform, fan_out = 16
    assert head.b.weight.abs().max() <= math.sqrt(6 / 8)  # fan_out = K = 8
    assert head.fc_norm.eps == 1e-6
    tokens = torch.randn(5, 9, 16)
    out = head(tokens)
    assert out.codes.shape == (5, 8) and set(out.codes.unique().tolist()) <= {-1.0, 1.0}
    assert torch.allclose(out.features, tokens.mean(1))
    h1, h2, weighted = head.train_forward(tokens, torch.randn(5, 9, 16))
    assert h1.shape == h2.shape == (5, 8) and weighted.shape == (5, 5)
    assert set(h1.unique().tolist()) <= {-1.0, 1.0}
    with pytest.raises(ValueError, match="token_dim"):
        head(torch.randn(5, 9, 32))


# ---------------------------------------------------------------- the loss by hand


def test_wch_loss_by_hand_on_two_samples_with_four_bits():
    # h1 = [(+,+,+,+), (+,+,-,-)], h2 = [(+,+,+,+), (+,-,+,-)]: dot products [[4, 0], [0, 0]],
    # logits = dot / K / tau = [[a, 0], [0, 0]] with a = 1 / 0.3. weighted = [[1, .5], [2, 1]].
    # Row 0: log-softmax = (a - L, -L), L = log(e^a + 1): CE0 = -(1 (a - L) + .5 (-L)) = -a + 1.5 L
    # Row 1: log-softmax = (-log 2, -log 2):          CE1 = (2 + 1) log 2
    # ce = (CE0 + CE1) / 2.
    # reg: column means of h1 = (1, 1, 0, 0) -> mean of squares .5; mean of h1^2 = 1 -> reg = -.5
    h1 = torch.tensor([[1.0, 1, 1, 1], [1, 1, -1, -1]], dtype=torch.float64)
    h2 = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1]], dtype=torch.float64)
    weighted = torch.tensor([[1.0, 0.5], [2.0, 1.0]], dtype=torch.float64)
    a = 1 / 0.3
    big_l = math.log(math.exp(a) + 1)
    ce = ((-a + 1.5 * big_l) + 3 * math.log(2)) / 2
    out = WCHLoss(temperature=0.3)(h1, h2, weighted)
    assert out["ce"].item() == pytest.approx(ce, abs=1e-12)
    assert out["reg"].item() == pytest.approx(-0.5, abs=1e-12)
    assert out["loss"].item() == pytest.approx(ce - 0.5, abs=1e-12)
    # normalize_w: targets [[2/3, 1/3], [2/3, 1/3]]:
    # CE0 = -(2/3 (a - L) + 1/3 (-L)) = -2a/3 + L; CE1 = log 2
    normalized = WCHLoss(temperature=0.3, normalize_w=True)(h1, h2, weighted)
    assert normalized["ce"].item() == pytest.approx(
        (-2 * a / 3 + big_l + math.log(2)) / 2, abs=1e-12
    )


def test_wch_loss_gradient_reaches_the_codes():
    torch.manual_seed(4)
    h1 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    h2 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    weighted = weight_matrix(torch.rand(4, 4, dtype=torch.float64), 0.2)
    assert torch.autograd.gradcheck(lambda x, y: WCHLoss()(x, y, weighted)["loss"], (h1, h2))


# ---------------------------------------------------------------- config, bad input, one step


def test_wch_config_has_the_reference_defaults():
    cfg = compose(["model=wch"])
    assert cfg.backbone._target_.endswith("ViTB16")
    assert (cfg.dataset.name, cfg.dataset.source.protocol) == ("cifar10", "standard")
    assert cfg.transforms._target_.endswith("SimCLRViews")
    assert cfg.scheduler._target_.endswith("ConstantLR")
    assert (cfg.optim.lr, cfg.epochs, cfg.batch_size, cfg.backbone_lr_scale) == (1e-4, 100, 64, 0)
    assert cfg.model.head.token_dim is None  # vit_b16: token width = features_size = 768
    assert (cfg.model.head.tau_w, cfg.model.loss.temperature) == (0.2, 0.3)
    assert cfg.model.loss.normalize_w is False


def test_wch_rejects_a_backbone_without_tokens():
    from utils.compose import build

    cfg = compose(["model=wch", "backbone=identity", "dataset=digits"])
    with pytest.raises(ConfigError, match="patch tokens"):
        build.build_model(cfg)


def test_wch_training_step_on_tiny_gives_a_finite_loss_and_head_gradients(tmp_path):
    from utils.compose.experiment import build_trainer

    cfg = compose(
        ["model=wch", "backbone=tiny", "dataset=digits", "batch_size=8", "model.nbit=16", *SMALL]
    )
    trainer = build_trainer(cfg, tmp_path)
    assert trainer.model.head.token_dim == 16  # from backbone.token_dim of the tiny backbone
    trainer.model.train()
    batch = next(iter(trainer.train_loader(0)))
    terms = trainer.training_step(batch)
    assert set(terms) == {"loss", "ce", "reg"}
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert all(p.grad is None for p in trainer.model.backbone.parameters())
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in trainer.model.head.parameters()
    )
    codes = trainer.model.eval().encode(batch[0][0])
    assert codes.shape == (8, 16) and set(codes.unique().tolist()) <= {-1.0, 1.0}
