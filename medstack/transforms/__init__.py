"""MONAI-style dictionary transforms that keep geometry, with seeded randomness.

>>> from medstack import transforms as T
>>> pipeline = T.Compose([T.RandomFlip(), T.RandomAffine(rotation=15), T.Window(preset="soft_tissue")], seed=0)
>>> out = pipeline({"image": ct, "label": seg}, index=17, epoch=3)      # doctest: +SKIP
"""

from medstack.transforms.base import Compose, OneOf, RandomApply, RandomTransform, Transform, generator_for
from medstack.transforms.intensity import (
    Clip,
    PercentileScale,
    RandomBiasField,
    RandomBlur,
    RandomBrightness,
    RandomContrast,
    RandomGamma,
    RandomNoise,
    ScaleToRange,
    ToDtype,
    Window,
    ZScore,
)
from medstack.transforms.spatial import (
    CropForeground,
    CropOrPad,
    DivisiblePad,
    Flip,
    Orient,
    Pad,
    RandomAffine,
    RandomAnisotropy,
    RandomElastic,
    RandomFlip,
    RandomRot90,
    Resample,
    Resize,
    Rot90,
    Spacing,
    invert,
)

__all__ = [
    "Clip",
    "Compose",
    "CropForeground",
    "CropOrPad",
    "DivisiblePad",
    "Flip",
    "OneOf",
    "Orient",
    "Pad",
    "PercentileScale",
    "RandomAffine",
    "RandomAnisotropy",
    "RandomApply",
    "RandomBiasField",
    "RandomBlur",
    "RandomBrightness",
    "RandomContrast",
    "RandomElastic",
    "RandomFlip",
    "RandomGamma",
    "RandomNoise",
    "RandomRot90",
    "RandomTransform",
    "Resample",
    "Resize",
    "Rot90",
    "ScaleToRange",
    "Spacing",
    "ToDtype",
    "Transform",
    "Window",
    "ZScore",
    "generator_for",
    "invert",
]  # fmt: skip
