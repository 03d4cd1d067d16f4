"""medstack: medical images to training-ready ``(C, D, H, W)`` volumes with correct world geometry.

>>> import medstack
>>> vol = medstack.load("data_samples/nifti/mr_t1.nii.gz")        # doctest: +SKIP
>>> vol.shape, vol.spacing, vol.orientation                        # doctest: +SKIP
"""

from __future__ import annotations

from medstack.errors import (
    ArgumentError,
    DicomError,
    FormatError,
    GeometryError,
    MedstackError,
    OutputExistsError,
    ReadError,
    UnknownFormatError,
    WriteError,
)
from medstack.io import load, save
from medstack.resample import resample  # the function shadows the submodule name on purpose
from medstack.stack import stack
from medstack.volume import Volume

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "DicomError",
    "FormatError",
    "GeometryError",
    "MedstackError",
    "OutputExistsError",
    "ReadError",
    "UnknownFormatError",
    "Volume",
    "WriteError",
    "__version__",
    "load",
    "resample",
    "save",
    "stack",
]
