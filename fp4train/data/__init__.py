"""Datasets (torch ``Dataset``s) and their config dataclasses; ``build_datasets`` picks one by name.

Vision: ``digits`` (default, offline), ``npz``, ``image_folder`` — see data/vision.py.
Text (byte-level): ``stdlib_text`` (default, offline), ``text_folders``, ``token_file`` — see
data/text.py.

The submodules are imported on first use, so that ``python -m fp4train.data.text`` runs the
module once (no runpy double-import warning).
"""

from __future__ import annotations

import dataclasses
import importlib

from torch.utils.data import Dataset

# name -> (module, config class, builder taking the config)
DATASETS: dict[str, tuple[str, str, str]] = {
    "digits": ("vision", "DigitsConfig", "digits_datasets"),
    "npz": ("vision", "NpzConfig", "npz_datasets"),
    "image_folder": ("vision", "ImageFolderConfig", "image_folder_datasets"),
    "stdlib_text": ("text", "StdlibTextConfig", "stdlib_text_datasets"),
    "text_folders": ("text", "TextFoldersConfig", "text_folders_datasets"),
    "token_file": ("text", "TokenFileConfig", "token_file_datasets"),
}


def _lookup(module: str, attr: str):
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


def dataset_config(name: str, **kwargs):
    """The config dataclass of dataset ``name`` filled from ``kwargs`` (its field names)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {sorted(DATASETS)}")
    module, config_name, _ = DATASETS[name]
    config_cls = _lookup(module, config_name)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"unknown {config_name} fields {unknown} for dataset {name!r}; valid: {sorted(fields)}")
    return config_cls(**kwargs)


def build_datasets(name: str, **kwargs) -> tuple[Dataset, Dataset]:
    """(train, val) datasets of ``name`` in {digits, npz, image_folder, stdlib_text, text_folders, token_file}."""
    config = dataset_config(name, **kwargs)
    module, _, builder = DATASETS[name]
    return _lookup(module, builder)(config)


def __getattr__(name: str):
    """Lazy access to the submodules' public names, e.g. ``fp4train.data.TokenWindows``."""
    for module in ("vision", "text"):
        mod = importlib.import_module(f"{__name__}.{module}")
        if hasattr(mod, name):
            return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DATASETS", "build_datasets", "dataset_config"]
