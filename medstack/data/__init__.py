"""Datasets, preparation of the patch store, and DataLoader helpers for 3D training."""

from medstack.data.catalogs import (
    CatalogWarning,
    describe_dataset,
    read_bids,
    read_case_table,
    read_catalog,
    read_decathlon,
)
from medstack.data.datasets import (
    BatchSlotSampler,
    CaseGroupedSampler,
    CaseStore,
    PatchDataset,
    QueueDataset,
    VolumeDataset,
)
from medstack.data.loader import DevicePrefetcher, PatchLoader, make_loader, read_batch
from medstack.data.prepare import cases_from_dicom_study, prepare, read_cases, to_original_grid
from medstack.data.workers import ProcessPatchLoader

__all__ = [
    "BatchSlotSampler",
    "CaseGroupedSampler",
    "CaseStore",
    "CatalogWarning",
    "DevicePrefetcher",
    "PatchDataset",
    "PatchLoader",
    "ProcessPatchLoader",
    "QueueDataset",
    "VolumeDataset",
    "cases_from_dicom_study",
    "describe_dataset",
    "make_loader",
    "prepare",
    "read_batch",
    "read_bids",
    "read_case_table",
    "read_cases",
    "read_catalog",
    "read_decathlon",
    "to_original_grid",
]  # fmt: skip
