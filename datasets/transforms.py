"""Image transforms (methods.md §5.3), built on ``torchvision.transforms.v2``.

Inputs are PIL images (RGB or 'L') or uint8 image tensors ``(C, H, W)``. Outputs are float32
tensors ``(C, H, W)`` in [0, 1] with the input's channel count -- NO normalisation (the
reference normalised with ImageNet statistics here; in this project the backbone normalises
internally). Two-view transforms return a list of two such tensors.

Every train transform has an integer attribute ``views`` (1 or 2). All of them work on 1-channel
inputs as small as 8x8 (the digits dataset): torchvision's ColorJitter leaves saturation and hue
of 1-channel images unchanged, RandomGrayscale keeps one channel, and the 3x3 Gaussian blur fits.

Size arguments may be None (feature datasets, which have no image size): the resize / crop
step is then left out. Feature splits skip transforms altogether anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from utils.errors import ConfigError

_INTERPOLATIONS = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}


def interpolation_mode(name: str) -> v2.InterpolationMode:
    """'bilinear' | 'bicubic' | 'nearest' -> torchvision mode (the reference mapped unknown names to bicubic)."""
    try:
        return _INTERPOLATIONS[str(name).lower()]
    except KeyError:
        raise ConfigError(
            f"Unknown interpolation {name!r}: use one of {', '.join(_INTERPOLATIONS)}."
        ) from None


def _clamp_unit(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, 1.0)


def _to_float_tensor() -> list[Callable]:
    """PIL / uint8 -> plain float32 tensor in [0, 1] (clamped: bicubic on float input can overshoot)."""
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.ToPureTensor(),
        v2.Lambda(_clamp_unit),
    ]


class _Pipeline:
    """A composed single-view pipeline with a ``views`` attribute."""

    views = 1

    def __init__(self, steps: Sequence[Callable | None]):
        self.pipeline = v2.Compose([s for s in steps if s is not None])

    def __call__(self, img) -> torch.Tensor:
        return self.pipeline(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


def _resize(size, interpolation):
    return (
        None
        if size is None
        else v2.Resize(size, interpolation=interpolation_mode(interpolation), antialias=True)
    )


def _center_crop(size):
    return None if size is None else v2.CenterCrop(size)


def _random_resized_crop(size, scale, ratio, interpolation):
    if size is None:
        return None
    return v2.RandomResizedCrop(
        size,
        scale=tuple(scale),
        ratio=tuple(ratio),
        interpolation=interpolation_mode(interpolation),
        antialias=True,
    )


class EvalTransform(_Pipeline):
    """Test / database transform: Resize(resize) -> CenterCrop(crop) -> float tensor in [0, 1]."""

    deterministic = True  # draws nothing from the RNG (the feature cache and the loaders ask)

    def __init__(self, resize: int | None, crop: int | None, interpolation: str = "bicubic"):
        super().__init__([_resize(resize, interpolation), _center_crop(crop), *_to_float_tensor()])


def eval_transform(
    resize: int | None, crop: int | None, interpolation: str = "bicubic"
) -> EvalTransform:
    """Reference eval pipeline: Resize(resize, bicubic) -> CenterCrop(crop) (methods.md §5.3).

    ImageNet100 / NUS-WIDE / COCO: 256 -> 224; CIFAR-10: 224 -> 224; digits: 8 -> 8.
    Returns ``(C, crop, crop)`` float32 in [0, 1].
    """
    return EvalTransform(resize, crop, interpolation)


class NoAugmentation(EvalTransform):
    """Train transform of SDC / UGH / BiHalf: the eval pipeline (Resize -> CenterCrop -> [0, 1]
    tensor) with bilinear instead of bicubic resizing by default.

    Bilinear as in the reference (torchvision's Resize default), although test/db use bicubic:
    kept for comparability (methods.md §5.3 and §8 item 14).
    """

    def __init__(self, resize: int | None, crop: int | None, interpolation: str = "bilinear"):
        super().__init__(resize, crop, interpolation)


class GaussianBlur:
    """Gaussian blur with a random radius sigma ~ U[sigma_min, sigma_max], always applied; on PIL
    images and on image tensors.

    PIL's ``ImageFilter.GaussianBlur`` for PIL input (the MoCo-v2 reference); for tensor input
    torchvision's blur with an odd kernel of about 4 sigma + 1 that fits the image. The radius is
    drawn from torch's RNG so seeding torch makes it reproducible. (torchvision's
    ``v2.GaussianBlur``, used by :class:`SimCLRViews`, has a fixed kernel size instead.)
    """

    def __init__(self, sigma: Sequence[float] = (0.1, 2.0)):
        self.sigma = tuple(float(s) for s in sigma)

    def __call__(self, img):
        sigma = float(torch.empty(1).uniform_(self.sigma[0], self.sigma[1]))
        if isinstance(img, Image.Image):
            return img.filter(ImageFilter.GaussianBlur(radius=sigma))
        height, width = img.shape[-2:]
        kernel = min(2 * math.ceil(2 * sigma) + 1, (min(height, width) - 1) // 2 * 2 + 1)
        return (
            F.gaussian_blur(img, kernel_size=[kernel, kernel], sigma=[sigma, sigma])
            if kernel > 1
            else img
        )

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma})"


def augmented_view(
    crop: int | None,
    scale: Sequence[float],
    ratio: Sequence[float],
    interpolation: str,
    flip_p: float,
    jitter: Sequence[float],
    jitter_p: float | None,
    grayscale_p: float,
    blur: Callable | None,
) -> _Pipeline:
    """One random view, the shared shape of the SimCLR and MoCo-v2 pipelines (methods.md §5.3):
    RandomResizedCrop(crop, scale, ratio) -> HorizontalFlip(flip_p) -> ColorJitter(*jitter)
    with probability jitter_p (None = always, without drawing for it) -> RandomGrayscale(p)
    -> blur (None = none) -> [0, 1] tensor. Every argument is set by the callers, whose
    defaults carry the sources."""
    color = v2.ColorJitter(*jitter)
    return _Pipeline(
        [
            _random_resized_crop(crop, scale, ratio, interpolation),
            v2.RandomHorizontalFlip(flip_p),
            color if jitter_p is None else v2.RandomApply([color], p=jitter_p),
            v2.RandomGrayscale(grayscale_p),
            blur,
            *_to_float_tensor(),
        ]
    )


class TwoViews:
    """Apply two pipelines independently to the same image; returns ``[view1, view2]``.

    Args:
        first: pipeline of view 1.
        second: pipeline of view 2 (default: the same pipeline as view 1).
    """

    views = 2

    def __init__(self, first: Callable, second: Callable | None = None):
        self.first = first
        self.second = first if second is None else second

    def __call__(self, img) -> list[torch.Tensor]:
        return [self.first(img), self.second(img)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(first={self.first}, second={self.second})"


class SimCLRViews(TwoViews):
    """The "cibhash" two-view pipeline of SDC-SimCLR, CIBHash and WCH (methods.md §5.3).

    Both views: RandomResizedCrop(crop, scale, ratio, bilinear) -> HorizontalFlip(p=flip_p)
    -> ColorJitter(brightness, contrast, saturation, hue) with p=jitter_p -> RandomGrayscale(p)
    -> GaussianBlur(blur_kernel, sigma ~ U[blur_sigma]) always applied -> [0, 1] tensor.
    Defaults are the reference's values.
    """

    def __init__(
        self,
        crop: int | None,
        scale: Sequence[float] = (0.5, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter_p: float = 0.7,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        grayscale_p: float = 0.2,
        blur_kernel: int = 3,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        interpolation: str = "bilinear",
    ):
        super().__init__(
            augmented_view(
                crop,
                scale,
                ratio,
                interpolation,
                flip_p,
                (brightness, contrast, saturation, hue),
                jitter_p,
                grayscale_p,
                v2.GaussianBlur(blur_kernel, sigma=tuple(blur_sigma)),
            )
        )


class MoCoV2Views(TwoViews):
    """The asymmetric "mocov2" two-view pipeline of NSH (methods.md §5.3).

    View 1: RandomResizedCrop(crop, scale) -> HFlip -> ColorJitter(0.4, 0.4, 0.4, hue1) with
    p=jitter_p1 -> RandomGrayscale(p) -> :class:`GaussianBlur`, radius ~ U[blur_sigma], always
    applied (MoCo-v2 itself used p=0.5) -> [0, 1] tensor.
    View 2: RandomResizedCrop(crop, scale) -> HFlip -> ColorJitter(0.4, 0.4, 0.4, hue2) always
    applied -> RandomGrayscale(p) -> [0, 1] tensor (no blur).
    Defaults are the reference's values.
    """

    def __init__(
        self,
        crop: int | None,
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue1: float = 0.1,
        jitter_p1: float = 0.8,
        hue2: float = 0.4,
        grayscale_p: float = 0.2,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        interpolation: str = "bilinear",
    ):
        common = (crop, scale, ratio, interpolation, flip_p)
        super().__init__(
            augmented_view(
                *common,
                (brightness, contrast, saturation, hue1),
                jitter_p1,
                grayscale_p,
                GaussianBlur(blur_sigma),
            ),
            augmented_view(
                *common, (brightness, contrast, saturation, hue2), None, grayscale_p, None
            ),
        )
