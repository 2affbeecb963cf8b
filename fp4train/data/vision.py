"""Image-classification data held in memory as normalised float tensors.

- ``digits`` (default): scikit-learn's bundled UCI digits (``sklearn.datasets.load_digits``),
  1797 real 8×8 grey images of 10 classes, values 0..16, shipped inside the wheel — offline.
- ``npz``: a ``.npz`` with arrays ``x``/``y`` (split here) or ``x_train``/``y_train``/``x_val``/``y_val``;
  images (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}; uint8 is scaled by 1/255.
- ``image_folder``: ``root/<class>/<image>`` (any format PIL reads), classes in sorted order.

Splits are stratified by class with ``sklearn.model_selection.train_test_split(random_state=seed)``.
Images are standardised per channel with the mean/std of the train split. Training augmentation
(flag ``augment``) is the CIFAR/DeiT light recipe: random crop of the image zero-padded by
size/8 (zero = the mean after standardising), and with ``hflip`` a horizontal flip with p = 1/2.
It is off for digits by default (a flipped digit is a different glyph).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
NPZ_LAYOUTS = (("x", "y"), ("x_train", "y_train", "x_val", "y_val"))


class ImageDataset(Dataset):
    """(image (C, H, W) float32, label int64) pairs, with optional random crop and flip.

    ``classes`` names the labels when the source has names (image_folder)."""

    classes: list[str] | None = None

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 augment: bool = False, hflip: bool = False) -> None:
        self.images, self.labels, self.num_classes = images, labels, num_classes
        self.augment, self.hflip = augment, hflip
        self.pad = max(1, images.shape[-1] // 8)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.augment:
            h, w = image.shape[-2:]
            padded = F.pad(image, (self.pad,) * 4)
            top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            image = padded[:, top : top + h, left : left + w]
            if self.hflip and torch.rand(()) < 0.5:
                image = image.flip(-1)
        return image, self.labels[index]


def _stratified_split(y: np.ndarray, val_fraction: float, seed: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    try:
        train, val = train_test_split(np.arange(len(y)), test_size=val_fraction, random_state=seed, stratify=y)
    except ValueError as e:
        raise ValueError(f"cannot split {source} into train/val by class: {e}") from None
    return np.sort(train), np.sort(val)


def _datasets(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
              augment: bool, hflip: bool) -> tuple[ImageDataset, ImageDataset]:
    """Standardise per channel with train statistics and wrap both splits."""
    x_train, x_val = torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(x_val, dtype=torch.float32)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    y_train, y_val = torch.as_tensor(y_train, dtype=torch.int64), torch.as_tensor(y_val, dtype=torch.int64)
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    return (
        ImageDataset((x_train - mean) / std, y_train, num_classes, augment, hflip),
        ImageDataset((x_val - mean) / std, y_val, num_classes, False, False),
    )


@dataclass
class DigitsConfig:
    val_fraction: float = 0.2
    seed: int = 0
    augment: bool = False
    hflip: bool = False


def digits_datasets(cfg: DigitsConfig) -> tuple[ImageDataset, ImageDataset]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 1, 8, 8)
    train, val = _stratified_split(y, cfg.val_fraction, cfg.seed, "sklearn digits")
    return _datasets(x[train], y[train], x[val], y[val], cfg.augment, cfg.hflip)


@dataclass
class NpzConfig:
    path: str = ""
    val_fraction: float = 0.2
    seed: int = 0
    augment: bool = True
    hflip: bool = True


def _images_nchw(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{where} has shape {x.shape}; expected images (N, H, W), (N, C, H, W) or (N, H, W, C), C in 1, 3")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{where} has dtype {x.dtype}; expected uint8, integer or float images")
    return x.astype(np.float32)


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
        raise ValueError(f"{where} has shape {y.shape}, dtype {y.dtype}; expected {n} non-negative integer labels")
    return y


def npz_datasets(cfg: NpzConfig) -> tuple[ImageDataset, ImageDataset]:
    path = Path(cfg.path)
    expected = " or ".join("/".join(keys) for keys in NPZ_LAYOUTS)
    if not path.is_file():
        raise FileNotFoundError(f"npz file {str(path)!r} does not exist (expected a .npz with arrays {expected})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:  # a user's file: zipfile, zlib, numpy's header parser… all mean unreadable
        raise ValueError(f"{path} is not a readable .npz ({type(e).__name__}: {e}); expected arrays {expected}") from None
    if set(NPZ_LAYOUTS[1]) <= set(arrays):
        x_train = _images_nchw(arrays["x_train"], f"{path}:x_train")
        x_val = _images_nchw(arrays["x_val"], f"{path}:x_val")
        y_train = _labels(arrays["y_train"], len(x_train), f"{path}:y_train")
        y_val = _labels(arrays["y_val"], len(x_val), f"{path}:y_val")
        return _datasets(x_train, y_train, x_val, y_val, cfg.augment, cfg.hflip)
    if set(NPZ_LAYOUTS[0]) <= set(arrays):
        x = _images_nchw(arrays["x"], f"{path}:x")
        y = _labels(arrays["y"], len(x), f"{path}:y")
        train, val = _stratified_split(y, cfg.val_fraction, cfg.seed, str(path))
        return _datasets(x[train], y[train], x[val], y[val], cfg.augment, cfg.hflip)
    raise ValueError(f"{path} holds arrays {sorted(arrays)}; expected {expected}")


@dataclass
class ImageFolderConfig:
    """``root/<class>/<image>``. ``image_size`` resizes every image to a square; without it all
    images must share one size. ``channels`` 1 converts to grey, 3 to RGB."""

    root: str = ""
    image_size: int | None = None
    channels: int = 3
    val_fraction: float = 0.2
    seed: int = 0
    augment: bool = True
    hflip: bool = True


def image_folder_datasets(cfg: ImageFolderConfig) -> tuple[ImageDataset, ImageDataset]:
    from PIL import Image, UnidentifiedImageError

    root = Path(cfg.root)
    if not cfg.root or not root.is_dir():
        raise FileNotFoundError(f"image_folder root {cfg.root!r} is not a directory (expected root/<class>/<image>)")
    if cfg.channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {cfg.channels}")
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    images, labels = [], []
    for label, class_dir in enumerate(classes):
        for path in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(path) as im:
                    im = im.convert("L" if cfg.channels == 1 else "RGB")
                    if cfg.image_size:
                        im = im.resize((cfg.image_size, cfg.image_size), Image.BILINEAR)
                    array = np.asarray(im)
            except (OSError, UnidentifiedImageError) as e:
                raise ValueError(f"cannot read image {path}: {e}") from None
            if images and array.shape != images[0].shape:
                raise ValueError(
                    f"image {path} has shape {array.shape}, others {images[0].shape}; set image_size to resize"
                )
            images.append(array)
            labels.append(label)
    if not images:
        raise ValueError(
            f"no images under {root}/<class>/ (classes found: {[d.name for d in classes]}, "
            f"suffixes {sorted(IMAGE_SUFFIXES)})"
        )
    x = _images_nchw(np.stack(images), str(root))
    y = np.asarray(labels)
    train, val = _stratified_split(y, cfg.val_fraction, cfg.seed, str(root))
    train_ds, val_ds = _datasets(x[train], y[train], x[val], y[val], cfg.augment, cfg.hflip)
    train_ds.classes = val_ds.classes = [d.name for d in classes]
    return train_ds, val_ds
