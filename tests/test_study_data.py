"""The TetraJet ViT study's data preparation (``experiments/studies/tetrajet_vit/prepare_data.py``):
IDX files in, the ``data=npz`` layout out, read back by fp4train's own loader; checked on a tiny
synthetic stand-in for Debian's ``dataset-fashion-mnist`` folder, written here by an IDX writer of
the test's own (big-endian header, C-order bytes)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.studies.tetrajet_vit.prepare_data import FILES, main, prepare
from fp4train.data import build_datasets

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "studies" / "tetrajet_vit" / "prepare_data.py"


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def fake_release(root: Path, n_train: int = 20, n_val: int = 10, h: int = 3, w: int = 5) -> dict[str, np.ndarray]:
    """A folder shaped like /usr/share/datasets/fashion-mnist with random images; non-square
    images so that a rows/cols swap shows."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, h, w), dtype=np.uint8),
        "y_train": np.arange(n_train) % 10,
        "x_val": rng.integers(0, 256, (n_val, h, w), dtype=np.uint8),
        "y_val": (np.arange(n_val) * 3) % 10,
    }
    root.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in FILES.items():
        write_idx(root / images, arrays[f"x_{split}"])
        write_idx(root / labels, arrays[f"y_{split}"])
    return arrays


def test_prepare_keeps_the_official_split_and_fp4train_reads_it(tmp_path):
    expected = fake_release(tmp_path / "src")
    out = tmp_path / "out" / "fm.npz"
    prepare(tmp_path / "src", out)
    with np.load(out, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(expected)
        for key, array in expected.items():
            np.testing.assert_array_equal(npz[key], array)
        assert npz["x_train"].dtype == np.uint8 and npz["y_train"].dtype == np.int64

    train, val = build_datasets("npz", path=str(out), augment=False)
    assert len(train) == 20 and len(val) == 10 and train.image_shape == (1, 3, 5)
    assert torch.equal(val.labels, torch.as_tensor(expected["y_val"]))
    # the loader scales uint8 by 1/255 and standardises with the train split's mean and std
    x_train = torch.as_tensor(expected["x_train"], dtype=torch.float32) / 255
    mean, std = x_train.mean(), x_train.std()
    want = (torch.as_tensor(expected["x_val"], dtype=torch.float32)[:, None] / 255 - mean) / std
    torch.testing.assert_close(val.images, want)


def test_documented_command_writes_a_manifest_that_verify_checks(tmp_path):
    fake_release(tmp_path / "src")
    out = tmp_path / "fm.npz"
    run = [sys.executable, str(SCRIPT), "--source", str(tmp_path / "src"), "--out", str(out)]
    done = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "x_train (20, 3, 5)" in done.stdout and "y_val (10,)" in done.stdout
    manifest = json.loads((tmp_path / "fm.npz.json").read_text())
    assert set(manifest["source"]["files"]) == {name for pair in FILES.values() for name in pair}
    assert manifest["arrays"]["x_val"]["shape"] == [10, 3, 5]
    done = subprocess.run([*run, "--verify"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "match" in done.stdout, done.stderr

    with np.load(out) as npz:  # a copy whose labels changed no longer verifies
        arrays = {k: npz[k] for k in npz.files}
    arrays["y_val"][0] = (arrays["y_val"][0] + 1) % 10
    np.savez_compressed(out, **arrays)
    with pytest.raises(ValueError, match=r"arrays \['y_val'\] differ"):
        main(["--out", str(out), "--verify"])


def _corrupt(root: Path, name: str, how: str) -> None:
    path = root / name
    if how == "missing":
        path.unlink()
        return
    with gzip.open(path, "rb") as f:
        raw = bytearray(f.read())
    if how == "float_type":
        raw[2] = 0x0D
    elif how == "truncated":
        raw = raw[:-1]
    elif how == "label_10":
        raw[-1] = 10
    elif how == "one_label_short":  # header and data both say one label fewer
        n = int.from_bytes(raw[4:8], "big") - 1
        raw = raw[:4] + n.to_bytes(4, "big") + raw[8:-1]
    with gzip.open(path, "wb") as f:
        f.write(bytes(raw))


@pytest.mark.parametrize(
    "name, how, error, match",
    [
        ("t10k-labels-idx1-ubyte.gz", "missing", FileNotFoundError, r"lacks \['t10k-labels-idx1-ubyte.gz'\]"),
        ("train-images-idx3-ubyte.gz", "float_type", ValueError, r"train-images-idx3-ubyte.gz: IDX magic 00000d03"),
        ("train-images-idx3-ubyte.gz", "truncated", ValueError, r"header says shape \(20, 3, 5\) \(300 bytes\), file holds 299"),
        ("t10k-labels-idx1-ubyte.gz", "label_10", ValueError, r"label 10 outside 0..9"),
        ("train-labels-idx1-ubyte.gz", "one_label_short", ValueError, r"train has 20 images .* but 19 labels"),
    ],
)
def test_bad_release_files_are_refused_by_name(tmp_path, name, how, error, match):
    fake_release(tmp_path / "src")
    _corrupt(tmp_path / "src", name, how)
    with pytest.raises(error, match=match):
        prepare(tmp_path / "src", tmp_path / "fm.npz")
    assert not (tmp_path / "fm.npz").exists()


def test_study_recipe_trains_on_prepared_28px_data_and_quantizes_every_block_linear(tmp_path):
    """The recipe's ViT geometry fits what prepare_data writes (grey 28×28, 10 classes): a few
    bf16 steps through the real entry point; under mxfp4 the 24 block linears are quantized."""
    from omegaconf import OmegaConf

    from fp4train.convert import convert
    from fp4train.models import build_model
    from fp4train.recipes import RecipeConfig
    from tests.train.conftest import DEBUG, read_metrics, run_main

    fake_release(tmp_path / "src", n_train=32, n_val=16, h=28, w=28)
    prepare(tmp_path / "src", tmp_path / "fm.npz")
    run = tmp_path / "run"
    run_main("recipe=tetrajet_vit_fashion_mnist", *DEBUG, "quant=bf16", "data.batch_size=16",
             f"data.options.path={tmp_path / 'fm.npz'}", f"hydra.run.dir={run}")
    assert read_metrics(run, "val/acc") and read_metrics(run, "train/loss")
    model_cfg = OmegaConf.load(run / ".hydra" / "config.yaml").model
    model = build_model(model_cfg.name, model_cfg.size, **model_cfg.overrides)
    report = str(convert(model, RecipeConfig("mxfp4")))
    assert "24 of 25 linear layers quantized" in report
