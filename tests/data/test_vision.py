"""Image data: digits split and normalisation, augmentation flag, npz and image-folder loaders, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from fp4train.data import build_datasets
from fp4train.data.vision import ImageDataset, _stratified_split


def test_digits_default_is_1797_real_8x8_images_split_by_class():
    train, val = build_datasets("digits")
    assert len(train) + len(val) == 1797 and len(val) == 360
    assert train.image_shape == val.image_shape == (1, 8, 8) and train.num_classes == 10
    counts = torch.bincount(val.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~20% of each class


def test_digits_split_is_deterministic_by_seed_and_disjoint():
    y = np.repeat(np.arange(10), 50)
    a_train, a_val = _stratified_split(y, 0.2, seed=3, source="y")
    b_train, b_val = _stratified_split(y, 0.2, seed=3, source="y")
    c_train, _ = _stratified_split(y, 0.2, seed=4, source="y")
    assert np.array_equal(a_train, b_train) and np.array_equal(a_val, b_val)
    assert not np.array_equal(a_train, c_train)
    assert not set(a_train) & set(a_val) and len(a_train) + len(a_val) == 500
    t1, _ = build_datasets("digits", seed=5)
    t2, _ = build_datasets("digits", seed=5)
    assert torch.equal(t1.images, t2.images)


def test_images_are_standardised_with_train_statistics():
    train, val = build_datasets("digits")
    assert abs(train.images.mean().item()) < 1e-5 and abs(train.images.std().item() - 1) < 1e-3
    assert abs(val.images.mean().item()) < 0.1


def test_digits_are_not_augmented_by_default():
    train, _ = build_datasets("digits")
    assert not train.augment and torch.equal(train[3][0], train[3][0])


def test_augmentation_is_a_padded_random_crop_or_its_flip_on_train_only():
    images = torch.arange(1, 2 * 3 * 32 * 32 + 1, dtype=torch.float32).view(2, 3, 32, 32)
    ds = ImageDataset(images, torch.tensor([0, 1]), 2, augment=True, hflip=True)
    padded = torch.nn.functional.pad(images[0], (4, 4, 4, 4))
    crops = [padded[:, t : t + 32, l : l + 32] for t in range(9) for l in range(9)]
    candidates = crops + [c.flip(-1) for c in crops]
    torch.manual_seed(0)
    views = [ds[0][0] for _ in range(40)]
    assert all(any(torch.equal(v, c) for c in candidates) for v in views)
    assert len({tuple(v.flatten().tolist()) for v in views}) > 10
    train, val = build_datasets("digits", augment=True)
    assert train.augment and not val.augment


@pytest.mark.parametrize("layout", ["xy", "split"])
def test_npz_layouts_load_channels_last_uint8(tmp_path, layout):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    y = np.repeat(np.arange(3), 20)
    path = tmp_path / "data.npz"
    if layout == "xy":
        np.savez(path, x=x, y=y)
    else:
        np.savez(path, x_train=x[:45], y_train=y[:45], x_val=x[45:], y_val=y[45:])
    train, val = build_datasets("npz", path=str(path), val_fraction=0.25)
    assert len(train) == 45 and len(val) == 15
    assert train.image_shape == (3, 32, 32) and train.num_classes == 3 and train.augment


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((4, 8, 8))}, r"holds arrays \['images'\]; expected x/y or x_train/y_train/x_val/y_val"),
        ({"x": np.zeros((4, 8)), "y": np.zeros(4, int)}, r"data.npz:x has shape \(4, 8\); expected images"),
        ({"x": np.zeros((4, 8, 8)), "y": np.zeros(3, int)}, r"data.npz:y has shape \(3,\), dtype int64; expected 4"),
    ],
)
def test_npz_errors_name_the_file_and_expected_arrays(tmp_path, arrays, message):
    np.savez(tmp_path / "data.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        build_datasets("npz", path=str(tmp_path / "data.npz"))


def test_missing_or_corrupt_npz_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"npz file '/no/such.npz' does not exist \(expected a .npz with arrays x/y"):
        build_datasets("npz", path="/no/such.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match=r"junk.npz is not a readable .npz"):
        build_datasets("npz", path=str(tmp_path / "junk.npz"))


@pytest.mark.parametrize("damage", ["truncate", "zero_member"])
def test_a_damaged_npz_is_an_error_naming_the_file(tmp_path, damage):
    # before: a truncated file raised zipfile.BadZipFile and a damaged member numpy's own error,
    # neither naming the file
    rng = np.random.default_rng(0)
    np.savez_compressed(tmp_path / "ok.npz", x=rng.integers(0, 256, (200, 8, 8), dtype=np.uint8), y=np.arange(200) % 2)
    data = bytearray((tmp_path / "ok.npz").read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        start = data.find(b"x.npy") + 100
        data[start : start + 300] = bytes(300)
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{tmp_path / 'bad.npz'} is not a readable .npz \(\w+"):
        build_datasets("npz", path=str(tmp_path / "bad.npz"))


def _write_folder(root, sizes=None, n=6):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "ant", "bee"]):
        (root / name).mkdir(parents=True)
        for i in range(n):
            size = sizes[i % len(sizes)] if sizes else (12, 12)
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folder_loads_sorted_classes_and_resizes(tmp_path):
    _write_folder(tmp_path, sizes=[(12, 12), (20, 16)])
    train, val = build_datasets("image_folder", root=str(tmp_path), image_size=16, channels=1, val_fraction=0.5)
    assert train.classes == ["ant", "bee", "cat"] and train.num_classes == 3
    assert train.image_shape == (1, 16, 16) and len(train) + len(val) == 18
    assert torch.bincount(val.labels).tolist() == [3, 3, 3]


@pytest.mark.parametrize(
    "setup, message",
    [
        ("mixed", r"has shape \(20, 16, 3\), others \(12, 12, 3\); set image_size to resize"),
        ("corrupt", r"cannot read image .*bee/broken.png"),
        ("empty", r"no images under .*classes found: \[\]"),
    ],
)
def test_image_folder_errors_name_the_file(tmp_path, setup, message):
    if setup == "mixed":
        _write_folder(tmp_path, sizes=[(12, 12), (20, 16)])
    elif setup == "corrupt":
        _write_folder(tmp_path)
        (tmp_path / "bee" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=message):
        build_datasets("image_folder", root=str(tmp_path))


def test_missing_image_folder_error_says_what_layout_is_expected():
    with pytest.raises(FileNotFoundError, match=r"root '/no/such' is not a directory \(expected root/<class>/<image>\)"):
        build_datasets("image_folder", root="/no/such")
