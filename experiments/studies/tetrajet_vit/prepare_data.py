"""Fashion-MNIST as one ``.npz`` for fp4train's ``data=npz`` option, from the files Debian ships.

Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, arXiv 1708.07747; Zalando SE, MIT licence): 70,000
grey 28×28 images of 10 clothing classes, split by its authors into 60,000 training and 10,000
test images, in the MNIST IDX format. Debian's package ``dataset-fashion-mnist``
(0.0~git20200523.55506a9-1, MIT) holds the four gzipped IDX files in
``/usr/share/datasets/fashion-mnist`` — the data are inside the package, nothing is downloaded
when it is read:

    apt-get install dataset-fashion-mnist          # or: apt-get download + dpkg -x, see README.md
    python experiments/studies/tetrajet_vit/prepare_data.py --out data/fashion_mnist.npz

The output holds ``x_train`` (60000, 28, 28) uint8, ``y_train`` (60000,) int64, ``x_val``
(10000, 28, 28) and ``y_val`` (10000,): the official test split is the validation split. A
manifest ``<out>.json`` beside it records the SHA-256 of each source file and of each array's
bytes, so that a copy carried to another machine can be checked (``--verify``).

IDX format (LeCun et al., the MNIST page): big-endian; a 4-byte magic ``0x00 0x00 <type>
<ndim>`` with type ``0x08`` = unsigned byte, then ``ndim`` uint32 sizes, then the data in C
order. Images are ndim 3 (N, rows, cols), labels ndim 1 (N,).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
# split name in the npz -> (images file, labels file) of the IDX release
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
UBYTE = 0x08
NUM_CLASSES = 10
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of a gzipped IDX file with ``ndim`` dimensions; ValueError on any mismatch."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header of {ndim} dimensions")
    zero, dtype, got_ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype != UBYTE or got_ndim != ndim:
        raise ValueError(
            f"{path}: IDX magic {raw[:4].hex()} (type 0x{dtype:02x}, {got_ndim} dims); "
            f"expected 0000{UBYTE:02x}{ndim:02x} (unsigned bytes, {ndim} dims)"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} ({int(np.prod(shape))} bytes), file holds {data.size}")
    return data.reshape(shape)


def read_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W) uint8, labels (N,) int64) of one split of the IDX release in ``source``."""
    images_name, labels_name = FILES[split]
    images, labels = read_idx(source / images_name, 3), read_idx(source / labels_name, 1)
    if len(images) != len(labels):
        raise ValueError(f"{source}: {split} has {len(images)} images ({images_name}) but {len(labels)} labels ({labels_name})")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{source / labels_name}: label {int(labels.max())} outside 0..{NUM_CLASSES - 1}")
    return images, labels.astype(np.int64)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _array_digests(arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    return {
        k: {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}
        for k, a in arrays.items()
    }


def prepare(source: Path, out: Path) -> dict:
    """Write ``out`` (.npz: x_train, y_train, x_val, y_val) and ``out.json`` (manifest); return the manifest."""
    missing = [name for pair in FILES.values() for name in pair if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{source} lacks {missing}; expected the Fashion-MNIST IDX files of Debian's dataset-fashion-mnist "
            f"(apt-get install dataset-fashion-mnist puts them in {DEFAULT_SOURCE})"
        )
    x_train, y_train = read_split(source, "train")
    x_val, y_val = read_split(source, "val")
    if x_train.shape[1:] != x_val.shape[1:]:
        raise ValueError(f"{source}: train images are {x_train.shape[1:]}, test images {x_val.shape[1:]}")
    arrays = {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    manifest = {
        "dataset": "Fashion-MNIST (arXiv 1708.07747), official train/test split; test = val",
        "source": {"debian_package": "dataset-fashion-mnist", "dir": str(source),
                   "files": {name: sha256_file(source / name) for pair in FILES.values() for name in pair}},
        "classes": list(CLASSES),
        "arrays": _array_digests(arrays),
        "npz_bytes": out.stat().st_size,
    }
    manifest_path(out).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def verify(out: Path) -> None:
    """Check ``out``'s arrays against the manifest written with it; ValueError naming the first mismatch."""
    expected = json.loads(manifest_path(out).read_text())["arrays"]
    with np.load(out, allow_pickle=False) as npz:
        got = _array_digests({k: npz[k] for k in npz.files})
    if got != expected:
        bad = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
        raise ValueError(f"{out} does not match {manifest_path(out)}: arrays {bad} differ")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"folder with the four IDX .gz files (default {DEFAULT_SOURCE})")
    p.add_argument("--out", type=Path, default=Path("data/fashion_mnist.npz"), help="output .npz (default data/fashion_mnist.npz)")
    p.add_argument("--verify", action="store_true", help="only check an existing --out against its manifest")
    args = p.parse_args(argv)
    if args.verify:
        verify(args.out)
        print(f"{args.out}: arrays match {manifest_path(args.out)}")
        return 0
    m = prepare(args.source, args.out)
    shapes = ", ".join(f"{k} {tuple(v['shape'])}" for k, v in m["arrays"].items())
    print(f"wrote {args.out} ({m['npz_bytes'] / 2**20:.1f} MiB: {shapes}) and {manifest_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
