"""Frozen backbones through the inference engines (utils/feature_extractor.py): the features equal
eager torch's within 1e-4 on real photos and CIFAR-10 images, fp32 and the thread count are set
explicitly, auto's choice and its fallback to torch (engine missing, conversion failing, features
differing), and the feature-cache key that keeps the engines' caches apart."""

from __future__ import annotations

import io
import logging
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import REPO, compose_run
from datasets import feature_cache as fc
from datasets.transforms import eval_transform
from models.backbone.simple import Tiny
from utils import feature_extractor as fe
from utils.errors import ConfigError

SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
HAS = {engine: not fe.missing_packages(engine) for engine in ("openvino", "onnxruntime")}
ENGINES = [
    pytest.param(e, marks=pytest.mark.skipif(not HAS[e], reason=f"{e} is not installed"))
    for e in ("openvino", "onnxruntime")
]


def photos(size: int = 224) -> torch.Tensor:
    """scikit-image's bundled colour photos through the eval transform: (4, 3, size, size)."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image gives the test photos")
    transform = eval_transform(size, size)
    images = [
        skimage_data.coffee(),
        skimage_data.astronaut(),
        skimage_data.chelsea(),
        skimage_data.rocket(),
    ]
    return torch.stack([transform(Image.fromarray(image)) for image in images])


def cifar_jpegs(count: int = 8, size: int = 224) -> torch.Tensor:
    """The first ``count`` JPEGs of the shared CIFAR-10 archive (read from the tar, not
    extracted) through the eval transform: (count, 3, size, size)."""
    if not SHARED_CIFAR.is_file():
        pytest.skip(
            f"shared CIFAR-10 copy not found at {SHARED_CIFAR} (a user's clone has no ../shared)"
        )
    transform, images = eval_transform(size, size), []
    with tarfile.open(SHARED_CIFAR) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                handle = tar.extractfile(member)
                assert handle is not None
                with Image.open(io.BytesIO(handle.read())) as image:
                    images.append(transform(image.convert("RGB")))
                if len(images) == count:
                    break
    return torch.stack(images)


def eager(backbone: nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return backbone.eval()(images).numpy()


def efficientnet_lite0() -> nn.Module:
    from models.backbone.efficientnet_lite import EfficientNetLite

    return EfficientNetLite("lite0", pretrained=True).eval().requires_grad_(False)


# ---------------------------------------------------------------- equal to eager torch
@pytest.mark.parametrize("engine", ENGINES)
def test_efficientnet_lite0_pretrained_on_photos_within_1e_4(engine):
    images = photos()
    backbone = efficientnet_lite0()
    expected = eager(backbone, images)
    extractor = fe.build_extractor(backbone, engine, torch.device("cpu"), images[:2], threads=2)
    assert extractor.name == engine  # converted and checked, no fallback
    got = extractor(images).numpy()
    assert got.shape == expected.shape == (4, 1280)
    assert np.abs(expected).max() > 1  # real features, not a degenerate all-zero output
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    # one image alone (the batch is dynamic) gives the same vector as in the batch
    np.testing.assert_allclose(extractor(images[2:3]).numpy(), expected[2:3], rtol=0, atol=1e-4)


@pytest.mark.data
@pytest.mark.parametrize("engine", ENGINES)
def test_efficientnet_lite0_on_cifar10_images_within_1e_4(engine):
    images = cifar_jpegs()
    backbone = efficientnet_lite0()
    extractor = fe.build_extractor(backbone, engine, torch.device("cpu"), images[:2], threads=2)
    assert extractor.name == engine
    np.testing.assert_allclose(
        extractor(images).numpy(), eager(backbone, images), rtol=0, atol=1e-4
    )


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "name", ["resnet50", "vgg16", "vit_b16", "efficientnet_lite1", "efficientnet_lite2"]
)
def test_every_freezable_backbone_converts_with_random_weights(engine, name):
    """torchvision's ImageNet weights cannot be downloaded here: random weights test the
    conversion of the architecture; the features are scaled to order 1 for an absolute 1e-4."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "configs" / "backbone" / f"{name}.yaml")
    cfg.pretrained = False
    torch.manual_seed(0)
    backbone = instantiate(cfg).eval().requires_grad_(False)
    images = photos()[:2]
    expected = eager(backbone, images)
    scale = float(np.abs(expected).max())
    assert scale > 0
    extractor = fe.build_extractor(backbone, engine, torch.device("cpu"), images, threads=2)
    assert extractor.name == engine
    np.testing.assert_allclose(
        extractor(images).numpy() / max(1.0, scale), expected / max(1.0, scale), rtol=0, atol=1e-4
    )


def test_grey_images_and_a_second_input_size_convert_per_shape():
    """A 1-channel input (digits) and another size each get their own converted model."""
    if not HAS["openvino"]:
        pytest.skip("openvino is not installed")
    backbone = Tiny(features_size=8).eval()
    extractor = fe.build_extractor(
        backbone, "openvino", torch.device("cpu"), torch.rand(2, 1, 8, 8), threads=1
    )
    for shape in [(3, 1, 8, 8), (5, 3, 16, 16)]:
        images = torch.rand(shape)
        np.testing.assert_allclose(extractor(images).numpy(), eager(backbone, images), atol=1e-5)
    assert set(extractor.runners) == {(1, 8, 8), (3, 16, 16)}


# ---------------------------------------------------------------- fp32 and threads, explicitly
@pytest.mark.skipif(not HAS["openvino"], reason="openvino is not installed")
@pytest.mark.parametrize("threads", [1, 2])
def test_openvino_runs_fp32_with_the_given_threads(threads):
    import openvino as ov

    extractor = fe.build_extractor(
        Tiny(features_size=8),
        "openvino",
        torch.device("cpu"),
        torch.rand(2, 3, 8, 8),
        threads=threads,
    )
    compiled = next(iter(extractor.runners.values())).get_compiled_model()
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == threads


@pytest.mark.skipif(not HAS["onnxruntime"], reason="onnxruntime is not installed")
def test_onnxruntime_uses_the_given_threads(monkeypatch):
    import onnxruntime as ort

    seen = []
    original = ort.InferenceSession

    def session(model, options, **kwargs):
        seen.append((options.intra_op_num_threads, options.inter_op_num_threads))
        return original(model, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    fe.build_extractor(
        Tiny(features_size=8), "onnxruntime", torch.device("cpu"), torch.rand(2, 3, 8, 8), threads=2
    )
    assert seen == [(2, 1)]


@pytest.mark.skipif(not HAS["openvino"], reason="openvino is not installed")
def test_engine_threads_default_to_torchs_count(monkeypatch):
    """The composer sets torch's threads from ``threads`` (auto: every core) before extraction."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    extractor = fe.build_extractor(
        Tiny(features_size=8), "openvino", torch.device("cpu"), torch.rand(2, 3, 8, 8)
    )
    assert extractor.threads == 1


# ---------------------------------------------------------------- auto and its fallbacks
def hide(monkeypatch, *packages):
    """Simulate packages that are not installed (an import of them raises ImportError)."""
    for package in packages:
        monkeypatch.setitem(sys.modules, package, None)


def test_auto_is_openvino_on_cpu_and_torch_on_cuda(monkeypatch):
    if HAS["openvino"]:
        assert fe.resolve_engine("auto", torch.device("cpu"))[0] == "openvino"
    assert fe.resolve_engine("auto", torch.device("cuda"))[0] == "torch"
    assert fe.resolve_engine("torch", torch.device("cpu"))[0] == "torch"
    hide(monkeypatch, "openvino")
    engine, why = fe.resolve_engine("auto", torch.device("cpu"))
    assert engine == "torch" and "OpenVINO is not installed" in why


def test_missing_openvino_falls_back_to_torch_with_one_log_line(monkeypatch, caplog):
    hide(monkeypatch, "openvino")
    backbone = Tiny(features_size=8)
    with caplog.at_level(logging.INFO, logger="utils.feature_extractor"):
        extractor = fe.build_extractor(
            backbone, "auto", torch.device("cpu"), torch.rand(2, 3, 8, 8)
        )
    assert isinstance(extractor, fe.TorchExtractor)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "feature extractor: torch (auto: OpenVINO is not installed (pip install openvino))"
    ]
    images = torch.rand(4, 3, 8, 8)
    np.testing.assert_array_equal(extractor(images).numpy(), eager(backbone, images))


@pytest.mark.parametrize(
    "engine, packages",
    [("openvino", ["openvino"]), ("onnxruntime", ["onnxruntime"]), ("onnxruntime", ["onnx"])],
)
def test_an_explicit_engine_that_is_missing_is_one_sentence(monkeypatch, engine, packages):
    hide(monkeypatch, *packages)
    with pytest.raises(
        ConfigError, match=f"feature_extractor={engine} needs {packages[0]}.*pip install"
    ):
        fe.build_extractor(
            Tiny(features_size=8), engine, torch.device("cpu"), torch.rand(2, 3, 8, 8)
        )


def test_unknown_engine_is_a_config_error():
    with pytest.raises(ConfigError, match="feature_extractor must be one of auto, torch, openvino"):
        fe.resolve_engine("tensorrt", torch.device("cpu"))


class Untraceable(Tiny):
    """A backbone whose forward leaves torch (numpy): no engine can convert it."""

    def forward(self, images):
        return torch.from_numpy(super().forward(images).numpy().copy())


@pytest.mark.parametrize("engine", ENGINES)
def test_a_backbone_the_engine_cannot_run_falls_back_in_auto_and_is_an_error_when_asked(
    engine, monkeypatch, caplog
):
    backbone = Untraceable(features_size=8).eval()
    example = torch.rand(2, 3, 8, 8)
    if engine == "onnxruntime":  # auto picks OpenVINO: make auto's choice the engine under test
        monkeypatch.setattr(
            fe,
            "resolve_engine",
            lambda s, d: ("onnxruntime", "test") if s == "auto" else ("onnxruntime", "asked"),
        )
    with caplog.at_level(logging.WARNING, logger="utils.feature_extractor"):
        extractor = fe.build_extractor(backbone, "auto", torch.device("cpu"), example)
    assert isinstance(extractor, fe.TorchExtractor)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"feature extractor: {engine} cannot run the backbone Untraceable"
    ]
    with pytest.raises(
        ConfigError,
        match=f"feature_extractor={engine} cannot run the backbone "
        "Untraceable.*set feature_extractor=torch",
    ):
        fe.build_extractor(backbone, engine, torch.device("cpu"), example)


@pytest.mark.skipif(not HAS["openvino"], reason="openvino is not installed")
def test_features_that_differ_from_torch_are_refused(monkeypatch, caplog):
    """A converted model off by more than 1e-4 (e.g. a silent bf16) is never used."""
    original = fe.OpenVINOExtractor._run
    monkeypatch.setattr(
        fe.OpenVINOExtractor,
        "_run",
        lambda self, runner, images: original(self, runner, images) + 2e-4,
    )
    with caplog.at_level(logging.WARNING, logger="utils.feature_extractor"):
        extractor = fe.build_extractor(
            Tiny(features_size=8), "auto", torch.device("cpu"), torch.rand(2, 3, 8, 8)
        )
    assert isinstance(extractor, fe.TorchExtractor)
    assert (
        "EngineMismatch: openvino gives features (2, 8) that differ from eager torch's"
        in caplog.text
    )
    monkeypatch.setattr(
        fe.OpenVINOExtractor,
        "_run",
        lambda self, runner, images: original(self, runner, images) + 5e-5,
    )
    assert (
        fe.build_extractor(
            Tiny(features_size=8), "auto", torch.device("cpu"), torch.rand(2, 3, 8, 8)
        ).name
        == "openvino"
    )


# ---------------------------------------------------------------- the feature-cache key
BASE = [
    "backbone=tiny",
    "dataset=digits",
    "model=sdc",
    "model.nbit=16",
    "epochs=1",
    "batch_size=64",
    "feature_cache=on",
]


@pytest.fixture
def calls(monkeypatch):
    """Images through the eager Tiny.forward (an engine's run does not call it)."""
    counter = {"images": 0}
    original = Tiny.forward

    def forward(self, images):
        counter["images"] += images.shape[0]
        return original(self, images)

    monkeypatch.setattr(Tiny, "forward", forward)
    return counter


def build(tmp_path: Path, *overrides: str):
    from utils.compose.experiment import build_trainer

    cfg = compose_run([*BASE, *overrides], tmp_path, "run")
    return build_trainer(cfg, tmp_path / "run")


def entries(tmp_path: Path) -> dict[str, str]:
    """Cache file name -> the engine recorded in its key parts."""
    import json

    found = {}
    for path in sorted((tmp_path / "data" / "feature_cache" / "digits").glob("*.npz")):
        with np.load(path) as stored:
            found[path.name] = json.loads(str(stored["parts"]))["engine"]
    return found


@pytest.mark.skipif(not HAS["openvino"], reason="openvino is not installed")
def test_a_torch_cache_is_never_read_by_an_openvino_run_nor_the_reverse(tmp_path, calls):
    torch_trainer = build(tmp_path, "feature_extractor=torch")
    torch_files = entries(tmp_path)
    assert len(torch_files) == 3 and set(torch_files.values()) == {"torch"}
    calls["images"] = 0
    ov_trainer = build(tmp_path, "feature_extractor=openvino")
    files = entries(tmp_path)
    assert len(files) == 6 and sorted(files.values()) == ["openvino"] * 3 + ["torch"] * 3
    # eager calls: only the conversion's trace and check on a 2-image example (a few images),
    # not the extraction of any split through torch (hundreds)
    assert 0 < calls["images"] <= 10 < len(ov_trainer.data.query)
    for split in ("train", "query", "database"):
        ov_features = getattr(ov_trainer.data, split).features
        for kind, array in getattr(torch_trainer.data, split).features.items():
            np.testing.assert_allclose(ov_features[kind], array, rtol=0, atol=1e-4)
    calls["images"] = 0
    build(tmp_path, "feature_extractor=torch")  # each reads its own again: nothing extracted
    build(tmp_path, "feature_extractor=openvino")  # (and a complete cache converts nothing)
    assert calls["images"] == 0 and len(entries(tmp_path)) == 6


def test_auto_without_openvino_reads_the_torch_cache(tmp_path, calls, monkeypatch):
    build(tmp_path, "feature_extractor=torch")
    calls["images"] = 0
    hide(monkeypatch, "openvino")
    trainer = build(tmp_path, "feature_extractor=auto")
    assert calls["images"] == 0 and set(entries(tmp_path).values()) == {"torch"}
    assert type(trainer.model.backbone).__name__ == "Identity"


@pytest.mark.skipif(not HAS["openvino"], reason="openvino is not installed")
def test_auto_whose_engine_fails_keys_its_features_as_torch(tmp_path, calls, monkeypatch):
    """The fallback is decided before anything is written: no file under openvino's key."""
    build(tmp_path, "feature_extractor=torch")
    calls["images"] = 0

    def fail(self, example):
        raise RuntimeError("simulated conversion failure")

    monkeypatch.setattr(fe.OpenVINOExtractor, "_convert", fail)
    build(tmp_path, "feature_extractor=auto")
    assert calls["images"] == 0 and set(entries(tmp_path).values()) == {"torch"}
    assert not list((tmp_path / "data" / "feature_cache" / "digits").glob("*.partial"))


def test_feature_cache_returns_data_and_leaves_the_model_alone(tmp_path):
    """datasets/ computes; the composer (utils/compose/experiment.py) swaps the backbone."""
    from utils.compose import build as builders

    cfg = compose_run([*BASE, "feature_extractor=torch"], tmp_path, "run")
    model = builders.build_model(cfg)
    backbone = model.backbone
    data = builders.build_data(cfg)
    cached = fc.apply_feature_cache(
        cfg,
        model,
        data,
        builders.build_train_transform(cfg),
        builders.build_eval_transform(cfg),
        torch.device("cpu"),
    )
    assert model.backbone is backbone  # untouched
    assert cached.features_size == 32 and cached.engine == "torch"
    assert isinstance(cached.data.query, fc.CachedSplit)
    np.testing.assert_allclose(
        cached.data.query.features["eval"][:3],
        eager(
            backbone,
            torch.stack([builders.build_eval_transform(cfg)(data.query.load(i)) for i in range(3)]),
        ),
        rtol=1e-6,
        atol=1e-7,
    )
    off = compose_run([*BASE[:-1], "feature_cache=off"], tmp_path, "off")
    assert fc.apply_feature_cache(off, model, data, None, None, torch.device("cpu")) is None


def test_datasets_do_not_import_models():
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "datasets").glob("*.py")
        if "from models" in p.read_text() or "import models" in p.read_text()
    ]
    assert offenders == []


# ------------------------------------------- the live frozen backbone (feature_cache=off)
@pytest.mark.skipif(not HAS["openvino"], reason="openvino is not installed")
def test_a_live_frozen_backbone_runs_through_the_engine_and_trains_the_eager_model(tmp_path, calls):
    """feature_cache=off: every step runs the backbone, through OpenVINO; one epoch of a two-view
    method (fresh augmentation) ends with the weights and codes of the eager run, up to the
    engine's 1e-4 on the features."""
    two_view = ["model=sdc_simclr", "feature_cache=off", "dataset.source.train=20"]
    eager_run = build(tmp_path / "eager", *two_view, "feature_extractor=torch")
    assert eager_run.model.frozen_backbone_runner is None
    engine_run = build(tmp_path / "engine", *two_view, "feature_extractor=openvino")
    runner = engine_run.model.frozen_backbone_runner
    assert runner is not None and runner.name == "openvino"
    assert type(engine_run.model.backbone).__name__ == "Tiny"  # the module stays
    images = torch.stack(
        [engine_run.eval_transform(engine_run.data.query.load(i)) for i in range(6)]
    )
    np.testing.assert_allclose(
        engine_run.model.backbone_input(images).numpy(),
        eager(engine_run.model.backbone, images),
        rtol=0,
        atol=1e-4,
    )
    seen = []
    for trainer in (eager_run, engine_run):
        trainer.optimizer = torch.optim.Adam(trainer.model.head.parameters(), lr=1e-3)
        calls["images"] = 0
        trainer.train_one_epoch(0)
        seen.append(calls["images"])
    steps = len(eager_run.train_loader(0))
    # eager: both views of every image of the epoch; the engine: none through the module
    assert steps > 1 and seen == [2 * steps * eager_run.batch_size, 0]
    for (name, a), b in zip(
        eager_run.model.head.state_dict().items(), engine_run.model.head.state_dict().values()
    ):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-3, err_msg=name)
    codes = [t.model.eval().encode(images) for t in (eager_run, engine_run)]
    assert torch.equal(codes[0].sign(), codes[1].sign())
    # the checkpointed state is the head's, the same keys either way
    assert (
        eager_run.model.trainable_state_dict().keys()
        == engine_run.model.trainable_state_dict().keys()
    )


def test_a_live_backbone_stays_eager_with_torch_or_where_features_are_cached(tmp_path, monkeypatch):
    hide(monkeypatch, "openvino")
    auto = build(tmp_path / "auto", "feature_cache=off", "feature_extractor=auto")
    assert auto.model.frozen_backbone_runner is None  # OpenVINO missing: the module
    cached = build(tmp_path / "cached", "feature_cache=on", "feature_extractor=torch")
    assert cached.model.head_only and cached.model.frozen_backbone_runner is None
