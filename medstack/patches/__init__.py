"""Patch positions (samplers), patch reading and stitching predictions back (aggregator)."""

from medstack.patches.aggregator import Aggregator, gaussian_weights, sliding_window_inference
from medstack.patches.reading import read_patch, read_patch_into
from medstack.patches.samplers import (
    CaseInfo,
    ForegroundOversampler,
    GridSampler,
    LabelSampler,
    PatchSampler,
    UniformSampler,
    WeightedSampler,
    class_voxel_lists,
    grid_positions,
)

__all__ = [
    "Aggregator", "CaseInfo", "ForegroundOversampler", "GridSampler", "LabelSampler", "PatchSampler", "UniformSampler", "WeightedSampler",
    "class_voxel_lists", "gaussian_weights", "grid_positions", "read_patch", "read_patch_into",
    "sliding_window_inference",
]  # fmt: skip
