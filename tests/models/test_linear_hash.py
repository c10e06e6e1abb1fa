"""LSH, PCAH, ITQ: closed-form fits against independent oracles, ITQ's rotation and loss curve,
bad nbit, the configs, and one complete closed-form run with its artefacts."""

import numpy as np
import pytest
import torch

from conftest import compose
from models.arch.linear_hash import ITQHead, LSHHead, PCAHHead
from utils.errors import ConfigError, TrainingError
from utils.retrieval import binarize

SMALL = ["num_workers=0", "progress=false", "val_size=0", "select_on=last"]


def _features(n=200, d=12, seed=0):
    """Correlated, non-centred features (like ReLU backbone outputs: all >= 0)."""
    rng = np.random.default_rng(seed)
    return np.abs(rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 3.0)


@pytest.mark.parametrize("head_class", [LSHHead, PCAHHead, ITQHead])
def test_linear_hash_codes_are_the_centred_projection_and_pm1_after_sign(head_class):
    x = _features()
    head = head_class(12, 8)
    assert list(head.parameters()) == []  # nothing to train
    with pytest.raises(TrainingError, match="not been fitted"):
        head(torch.zeros(2, 12))
    head.fit(torch.from_numpy(x), seed=3)
    codes = head(torch.from_numpy(x).float()).codes
    expected = (x - x.mean(0)) @ head.projection.double().numpy()
    assert np.allclose(codes.double().numpy(), expected, atol=1e-4)
    assert np.allclose(head.mean.numpy(), x.mean(0), atol=1e-6)
    bits = binarize(codes)
    assert set(np.unique(bits.numpy()).tolist()) <= {-1.0, 1.0}
    # the buffers are the state: a fresh head loading it gives the same codes
    fresh = head_class(12, 8)
    fresh.load_state_dict(head.state_dict())
    assert {"mean", "projection", "fitted"} <= set(head.state_dict())
    assert torch.equal(fresh(torch.from_numpy(x).float()).codes, codes)


def test_lsh_is_seeded_gaussian_and_optionally_uncentred():
    x = _features()
    a, b, c = LSHHead(12, 16), LSHHead(12, 16), LSHHead(12, 16)
    a.fit(x, seed=1), b.fit(x, seed=1), c.fit(x, seed=2)
    assert torch.equal(a.projection, b.projection) and not torch.equal(a.projection, c.projection)
    big = LSHHead(12, 4000)
    big.fit(x, seed=0)
    assert abs(big.projection.mean().item()) < 0.02 and abs(big.projection.std().item() - 1) < 0.02
    uncentred = LSHHead(12, 4, center=False)
    uncentred.fit(x, seed=0)
    assert torch.equal(uncentred.mean, torch.zeros(12))


def test_pcah_projection_equals_the_principal_directions():
    from sklearn.decomposition import PCA

    x = _features()
    head = PCAHHead(12, 5)
    head.fit(x, seed=0)
    projection = head.projection.double().numpy()
    # oracle 1: numpy eigendecomposition of the covariance (eigh: ascending eigenvalues)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x, rowvar=False))
    top = eigenvectors[:, ::-1][:, :5]
    # oracle 2: scikit-learn's PCA components
    components = PCA(n_components=5).fit(x).components_.T
    for oracle in (top, components):
        for k in range(5):  # equal up to the sign of each direction
            assert (
                min(
                    np.abs(projection[:, k] - oracle[:, k]).max(),
                    np.abs(projection[:, k] + oracle[:, k]).max(),
                )
                < 1e-5
            ), k
    assert np.allclose(projection.T @ projection, np.eye(5), atol=1e-5)


def test_pcah_and_itq_reject_more_bits_than_directions():
    x = _features(n=50, d=6)
    for head_class in (PCAHHead, ITQHead):
        with pytest.raises(ConfigError, match=r"model.nbit <= 6"):
            head_class(6, 8).fit(x, seed=0)
    with pytest.raises(ConfigError, match=r"model.nbit <= 4"):  # N = 4 training items
        PCAHHead(6, 5).fit(x[:4], seed=0)
    LSHHead(6, 64).fit(x, seed=0)  # random projections: any nbit


def test_itq_rotation_is_orthogonal_and_the_quantisation_loss_never_increases():
    x = _features(n=300, d=16)
    head = ITQHead(16, 8, iterations=50)
    info = head.fit(x, seed=7)
    rotation = head.rotation
    assert np.allclose(rotation.T @ rotation, np.eye(8), atol=1e-6)
    assert np.allclose(rotation @ rotation.T, np.eye(8), atol=1e-6)
    losses = np.array(head.quantization_losses)
    assert len(losses) == 51 and info["quantization_losses"] == head.quantization_losses
    assert np.all(np.diff(losses) <= 1e-9 * losses[0])  # non-increasing (up to rounding)
    assert losses[-1] < losses[0]
    # the final projection W R: sign(V R) is the best B for the final R, so its error is at most
    # the stored last loss ||B_50 - V R_50||^2 (B_50 = sign(V R_49))
    projected = (x - x.mean(0)) @ head.projection.double().numpy()
    final_codes = np.where(projected >= 0, 1.0, -1.0)
    assert np.sum((final_codes - projected) ** 2) <= losses[-1] * (1 + 1e-6)
    # seeded: same seed, same rotation; another seed starts elsewhere
    again = ITQHead(16, 8)
    again.fit(x, seed=7)
    assert np.allclose(again.rotation, rotation)
    other = ITQHead(16, 8, iterations=0)
    other.fit(x, seed=8)
    assert len(other.quantization_losses) == 1


def test_itq_beats_its_random_start_and_pca_on_quantisation_error():
    x = _features(n=300, d=16, seed=5)
    itq, pcah = ITQHead(16, 8), PCAHHead(16, 8)
    itq.fit(x, seed=0), pcah.fit(x, seed=0)

    def quantisation_error(head):
        v = (x - x.mean(0)) @ head.projection.double().numpy()
        return np.sum((np.where(v >= 0, 1.0, -1.0) - v) ** 2)

    assert quantisation_error(itq) < quantisation_error(pcah)


@pytest.mark.parametrize(
    "method,head_class", [("lsh", LSHHead), ("pcah", PCAHHead), ("itq", ITQHead)]
)
def test_linear_hash_configs_compose_and_instantiate(method, head_class):
    from utils.compose import build

    cfg = compose([f"model={method}", "backbone=tiny", "dataset=digits", "model.nbit=16"])
    assert (cfg.epochs, cfg.backbone_lr_scale) == (1, 0)
    assert cfg.transforms._target_.endswith("NoAugmentation")
    model = build.build_model(cfg)
    assert isinstance(model.head, head_class) and model.frozen_backbone
    assert build.trainer_class(cfg).closed_form is True
    build.build_criterion(cfg)
    if method == "itq":
        assert cfg.model.head.iterations == 50


def test_closed_form_trainer_rejects_too_many_bits_before_any_work(tmp_path):
    from utils.compose.experiment import build_trainer

    cfg = compose(["model=pcah", "backbone=tiny", "dataset=digits", *SMALL])  # 64 bits > D = 32
    with pytest.raises(ConfigError, match="model.nbit <= 32"):
        build_trainer(cfg, tmp_path)
    cfg = compose(["model=lsh", "backbone=tiny", "dataset=digits", "backbone_lr_scale=1", *SMALL])
    with pytest.raises(ConfigError, match="backbone_lr_scale=0"):
        build_trainer(cfg, tmp_path)


def test_closed_form_run_writes_the_engines_artefacts_and_reloads(tmp_path):
    from models.trainers.base import load_model_state
    from utils.checkpoint import load_checkpoint, read_json
    from utils.compose import build
    from utils.compose.experiment import build_trainer

    cfg = compose(["model=itq", "backbone=tiny", "dataset=digits", "model.nbit=16", *SMALL])
    trainer = build_trainer(cfg, tmp_path)
    metrics = trainer.fit(None, None)
    key = metrics["main_metric"]
    assert key == "mAP@100" and 0.0 < metrics["last"][key] <= 1.0
    assert metrics["best"]["epoch"] == 1 and metrics["best"][key] == metrics["last"][key]
    for name in (
        "train_history.json",
        "test_history.json",
        "metrics.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (tmp_path / name).is_file(), name
    assert list(tmp_path.glob("events.out.tfevents*"))
    history = read_json(tmp_path / "train_history.json")
    assert len(history) == 1 and history[0]["train_items"] == len(trainer.data.train)
    assert history[0]["train_quantization_loss"] <= history[0]["train_quantization_loss_initial"]
    assert read_json(tmp_path / "test_history.json")[0][key] == metrics["last"][key]
    # a fresh model loading best.pt (as val.py does) gives the same codes
    state = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert {"head.mean", "head.projection"} <= set(state["model"])
    assert not any(k.startswith("backbone.") for k in state["model"])
    fresh = build.build_model(cfg)
    load_model_state(fresh, state["model"])
    images = torch.stack([trainer.eval_transform(trainer.data.query.load(i)) for i in range(5)])
    assert torch.equal(fresh.eval().encode(images), trainer.model.eval().encode(images))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1
