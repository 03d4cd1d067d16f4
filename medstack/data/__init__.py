"""Datasets, preparation of the patch store, and DataLoader helpers for 3D training."""

from medstack.data.datasets import CaseGroupedSampler, CaseStore, PatchDataset, QueueDataset, VolumeDataset
from medstack.data.loader import DevicePrefetcher, PatchLoader, make_loader
from medstack.data.prepare import cases_from_dicom_study, prepare, read_cases, to_original_grid

__all__ = [
    "CaseGroupedSampler", "CaseStore", "DevicePrefetcher", "PatchDataset", "PatchLoader", "QueueDataset", "VolumeDataset",
    "cases_from_dicom_study", "make_loader", "prepare", "read_cases", "to_original_grid",
]  # fmt: skip
