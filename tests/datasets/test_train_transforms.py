"""Transforms on 1-channel 8x8 (digits) and RGB 32x32 (CIFAR) inputs."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datasets.base import TransformedSplit
from datasets.digits import digits_splits
from datasets.transforms import (
    EvalTransform,
    GaussianBlur,
    MoCoV2Views,
    NoAugmentation,
    SimCLRViews,
    TwoViews,
    augmented_view,
    eval_transform,
)
from utils.errors import ConfigError


def grey8():
    return Image.fromarray(np.random.RandomState(0).randint(0, 256, (8, 8), dtype=np.uint8))


def rgb32():
    return Image.fromarray(np.random.RandomState(1).randint(0, 256, (32, 32, 3), dtype=np.uint8))


INPUTS = {"L8": (grey8, 1, 8), "RGB32": (rgb32, 3, 32)}


def make(kind, size):
    return {
        "eval": lambda: eval_transform(size, size),
        "no_augmentation": lambda: NoAugmentation(size, size),
        "simclr": lambda: SimCLRViews(size),
        "mocov2": lambda: MoCoV2Views(size),
    }[kind]()


def check_tensor(x, channels, size):
    assert type(x) is torch.Tensor and x.dtype == torch.float32
    assert x.shape == (channels, size, size)
    assert x.min() >= 0 and x.max() <= 1


@pytest.mark.parametrize("input_name", list(INPUTS))
@pytest.mark.parametrize("kind", ["eval", "no_augmentation", "simclr", "mocov2"])
def test_shapes_dtypes_range(kind, input_name):
    image, channels, size = INPUTS[input_name]
    transform = make(kind, size)
    torch.manual_seed(0)
    for img in (
        image(),
        torch.from_numpy(np.array(image())).reshape(size, size, -1).permute(2, 0, 1).contiguous(),
    ):
        for _ in range(8):  # several random draws: each random component gets applied
            out = transform(img)
            if transform.views == 1:
                check_tensor(out, channels, size)
            else:
                assert isinstance(out, list) and len(out) == 2
                for view in out:
                    check_tensor(view, channels, size)


@pytest.mark.parametrize(
    "kind, views", [("eval", 1), ("no_augmentation", 1), ("simclr", 2), ("mocov2", 2)]
)
def test_views_attribute(kind, views):
    assert make(kind, 8).views == views
    assert isinstance(make(kind, 8).views, int)


def test_resize_and_crop():
    check_tensor(eval_transform(224, 224)(rgb32()), 3, 224)
    check_tensor(NoAugmentation(64, 48)(rgb32()), 3, 48)
    check_tensor(SimCLRViews(224)(rgb32())[0], 3, 224)
    check_tensor(eval_transform(8, 8)(grey8()), 1, 8)


def test_no_augmentation_is_deterministic_and_exact_at_native_size():
    img = rgb32()
    a, b = NoAugmentation(32, 32)(img), NoAugmentation(32, 32)(img)
    assert torch.equal(a, b)
    assert torch.allclose(a, torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("input_name", list(INPUTS))
@pytest.mark.parametrize("kind", ["simclr", "mocov2"])
def test_two_views_differ(kind, input_name):
    image, _, size = INPUTS[input_name]
    torch.manual_seed(0)
    first, second = make(kind, size)(image())
    assert not torch.equal(first, second)


def test_two_views_generic():
    double = TwoViews(NoAugmentation(8, 8))
    a, b = double(grey8())
    assert double.views == 2 and torch.equal(a, b)


def test_gaussian_blur_on_tensor_and_pil():
    torch.manual_seed(0)
    blur = GaussianBlur((1.9, 2.0))
    assert blur(grey8()).size == (8, 8)
    x = torch.rand(1, 8, 8)
    y = blur(x)
    assert y.shape == x.shape and not torch.equal(x, y)


def test_unknown_interpolation():
    with pytest.raises(ConfigError, match="bilinear"):
        NoAugmentation(8, 8, interpolation="lanczos5")


def test_collate_two_views_from_digits():
    data = digits_splits()
    loader = DataLoader(TransformedSplit(data.train, SimCLRViews(8)), batch_size=4)
    images, labels, index = next(iter(loader))
    assert isinstance(images, list) and len(images) == 2
    assert images[0].shape == (4, 1, 8, 8) and images[1].shape == (4, 1, 8, 8)
    assert labels.dtype == torch.long and labels.tolist() == data.train.labels[:4].tolist()
    assert index.tolist() == [0, 1, 2, 3]
    images, labels, _ = next(
        iter(DataLoader(TransformedSplit(data.query, eval_transform(8, 8)), batch_size=3))
    )
    assert images.shape == (3, 1, 8, 8) and images.dtype == torch.float32


@pytest.mark.parametrize("input_name", list(INPUTS))
def test_every_component_forced_on(input_name):
    """ColorJitter, RandomGrayscale and the blurs applied with probability 1 (1-channel 8x8 too)."""
    image, channels, size = INPUTS[input_name]
    for transform in (
        SimCLRViews(size, jitter_p=1.0, grayscale_p=1.0),
        MoCoV2Views(size, jitter_p1=1.0, grayscale_p=1.0),
    ):
        for view in transform(image()):
            check_tensor(view, channels, size)


def test_transforms_pickle():
    """DataLoader workers started with 'spawn' need picklable transforms."""
    import pickle

    for transform in (eval_transform(8, 8), NoAugmentation(8, 8), SimCLRViews(8), MoCoV2Views(8)):
        clone = pickle.loads(pickle.dumps(transform))
        assert clone.views == transform.views


def test_no_augmentation_is_the_eval_pipeline_with_bilinear_resizing():
    image = rgb32()
    assert isinstance(NoAugmentation(24, 16), EvalTransform)
    assert torch.equal(
        NoAugmentation(24, 16, interpolation="bicubic")(image), eval_transform(24, 16)(image)
    )
    assert not torch.equal(NoAugmentation(24, 16)(image), eval_transform(24, 16)(image))


def test_augmented_view_steps_by_hand():
    image = rgb32()
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255  # (3, 32, 32)

    def same(x, y):  # equal up to float rounding of the /255 scaling
        return x.shape == y.shape and bool((x - y).abs().max() <= 1e-6)

    off = {
        "crop": None,
        "scale": (1.0, 1.0),
        "ratio": (1.0, 1.0),
        "interpolation": "bilinear",
        "jitter": (0.0, 0.0, 0.0, 0.0),
        "jitter_p": 0.0,
        "grayscale_p": 0.0,
        "blur": None,
    }
    assert same(augmented_view(flip_p=0.0, **off)(image), pixels)  # every step off
    assert same(augmented_view(flip_p=1.0, **off)(image), pixels.flip(-1))
    grey = augmented_view(flip_p=0.0, **{**off, "grayscale_p": 1.0})(image)
    assert grey.shape == (3, 32, 32) and torch.equal(grey[0], grey[1])
    # a 32x32 crop of a 32x32 image at scale 1, ratio 1 is the image itself
    assert same(augmented_view(flip_p=0.0, **{**off, "crop": 32})(image), pixels)
