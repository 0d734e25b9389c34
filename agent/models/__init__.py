"""What a device runs of the model subsystem: a catalog, a verified on-disk cache,
downloads, OTA updates, imports and embedders.

``import agent.models`` stays light (pydantic only). Building and tuning models is
workstation tooling, :mod:`agent.modelbuild`, which nothing here imports at module
level (``models build``/``tune`` import it in their handlers).
"""

from agent.models.cache import ModelCache, VerifyResult, default_cache_dir
from agent.models.catalog import CATALOG, RECIPE_VERSION, CatalogEntry, get_entry
from agent.models.errors import (
    BuildExtraMissing,
    BuildFailed,
    DiskFull,
    DownloadFailed,
    FidelityTooLow,
    IntegrityError,
    ModelError,
    ModelNotInstalled,
    SourceInvalid,
    SourcePackageMissing,
    StaleModel,
    UnknownModel,
    UnpinnedFile,
)
from agent.models.manifest import Fidelity, FileRecord, Manifest

DEFAULT_MODEL = "smollm2-135m-instruct"

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "RECIPE_VERSION",
    "BuildExtraMissing",
    "BuildFailed",
    "CatalogEntry",
    "DiskFull",
    "DownloadFailed",
    "Fidelity",
    "FidelityTooLow",
    "FileRecord",
    "IntegrityError",
    "Manifest",
    "ModelCache",
    "ModelError",
    "ModelNotInstalled",
    "SourceInvalid",
    "SourcePackageMissing",
    "StaleModel",
    "UnknownModel",
    "UnpinnedFile",
    "VerifyResult",
    "default_cache_dir",
    "get_entry",
]
