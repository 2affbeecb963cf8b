"""Byte-level text data: the stdlib corpus, the split, the windows, the prepare command, errors."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fp4train.data import build_datasets
from fp4train.data.text import (
    TokenWindows, _is_val_block, main, prepare_text_folders, resolve_folder, stdlib_sources, write_token_files,
)

REPO = Path(__file__).resolve().parents[2]


def _token_file(tmp_path, tokens, dtype=np.uint16, name="tokens.bin"):
    path = tmp_path / name
    np.asarray(tokens, dtype=dtype).tofile(path)
    return path


def test_stdlib_sources_are_sorted_python_files_outside_test_dirs():
    sources = stdlib_sources()
    keys = [k for k, _ in sources]
    assert keys == sorted(keys) and len(keys) > 300
    assert all(k.endswith(".py") for k in keys)
    for key in keys:
        assert not {"test", "tests", "idlelib", "site-packages"} & set(key.split("/")[:-1]), key
    assert "pydoc_data/topics.py" in keys


def test_stdlib_corpus_is_cached_under_fp4train_cache_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("FP4TRAIN_CACHE", str(tmp_path))
    train, val = build_datasets("stdlib_text", seq_len=64)
    (cache,) = tmp_path.iterdir()
    meta = json.loads((cache / "meta.json").read_text())
    total = sum(p.stat().st_size for _, p in stdlib_sources())
    assert meta["train_tokens"] + meta["val_tokens"] == total == train.n_tokens + val.n_tokens
    assert 0.02 < val.n_tokens / total < 0.10
    mtime = (cache / "train.bin").stat().st_mtime_ns
    train2, _ = build_datasets("stdlib_text", seq_len=64)
    assert (cache / "train.bin").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert torch.equal(train[123][0], train2[123][0])
    assert train.vocab_size == 256 and int(train[0][0].max()) < 256


def test_split_sends_each_block_to_exactly_one_side(tmp_path):
    texts = {f"f{i}.txt": "".join(f"file {i} line {j}\n" for j in range(40 * (i + 1))) for i in range(4)}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    sources = [(name, tmp_path / name) for name in sorted(texts)]
    write_token_files(sources, tmp_path / "out", val_fraction=0.3, block_size=100)
    expected = {"train": b"", "val": b""}
    for name in sorted(texts):
        data = texts[name].encode()
        for i in range(0, len(data), 100):
            expected["val" if _is_val_block(name, i // 100, 0.3) else "train"] += data[i : i + 100]
    for split in ("train", "val"):
        got = np.fromfile(tmp_path / "out" / f"{split}.bin", dtype=np.uint16).astype(np.uint8).tobytes()
        assert got == expected[split]
    assert len(expected["train"]) + len(expected["val"]) == sum(len(t) for t in texts.values())


def test_window_target_is_input_shifted_by_one(tmp_path):
    ds = TokenWindows(_token_file(tmp_path, np.arange(1000) % 300), seq_len=16, num_samples=50)
    for i in range(50):
        x, y = ds[i]
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (16,)
        assert torch.equal(x[1:], y[:-1]) and torch.equal((x + 1) % 300, y)


def test_random_windows_are_deterministic_per_index_and_seed(tmp_path):
    path = _token_file(tmp_path, np.arange(5000))
    a, b = TokenWindows(path, 32, num_samples=20, seed=1), TokenWindows(path, 32, num_samples=20, seed=1)
    assert [a.offset(i) for i in range(20)] == [b.offset(i) for i in range(20)]
    assert torch.equal(a[7][0], b[7][0]) and torch.equal(a[7][0], a[7][0])
    c = TokenWindows(path, 32, num_samples=20, seed=2)
    assert [a.offset(i) for i in range(20)] != [c.offset(i) for i in range(20)]


@pytest.mark.parametrize("n_tokens", [17, 18, 40])
def test_windows_never_read_past_the_end(tmp_path, n_tokens):
    path = _token_file(tmp_path, np.arange(n_tokens))
    for random_offsets in (True, False):
        ds = TokenWindows(path, 16, num_samples=300, random_offsets=random_offsets)
        offsets = [ds.offset(i) for i in range(len(ds))]
        assert min(offsets) >= 0 and max(offsets) == n_tokens - 17  # the last target is the last token
        assert all(len(ds[i][1]) == 16 for i in range(len(ds)))


def test_val_windows_default_to_non_overlapping_and_cover_the_file(tmp_path):
    ds = TokenWindows(_token_file(tmp_path, np.arange(161)), 16, random_offsets=False)
    assert len(ds) == 10 and [ds.offset(i) for i in range(10)] == list(range(0, 160, 16))


def test_windows_pickle_without_the_memmap(tmp_path):
    ds = TokenWindows(_token_file(tmp_path, np.arange(100)), 8)
    first = ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._tokens is None and torch.equal(clone[0][0], first[0])


def test_uint32_token_files_hold_large_ids(tmp_path):
    ds = TokenWindows(_token_file(tmp_path, np.arange(70000, 70100), np.uint32), 8, dtype="uint32")
    assert int(ds[0][0][0]) >= 70000


def test_prepare_command_round_trips_text_bytes(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("héllo wörld\n" * 300)
    (tmp_path / "docs" / "skip.bin").write_bytes(b"\xff\xfe" * 50)
    (tmp_path / "b.txt").write_text("the quick brown fox\n" * 200)
    out = tmp_path / "tok"
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "fp4train.data.text", "prepare",
         "--out", str(out), "--dtype", "uint32", "--block-size", "256", "--val-fraction", "0.2",
         str(tmp_path / "docs"), str(tmp_path / "b.txt")],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "uint32" and meta["n_files"] == 2
    train, val = build_datasets("token_file", path=str(out), seq_len=8)
    assert train.dtype == np.uint32 and train.vocab_size == 256
    expected = {"train": b"", "val": b""}
    for key, path in [("a.md", tmp_path / "docs" / "a.md"), ("b.txt", tmp_path / "b.txt")]:
        data = path.read_bytes()
        for i in range(0, len(data), 256):
            expected["val" if _is_val_block(key, i // 256, 0.2) else "train"] += data[i : i + 256]
    for split, ds in (("train", train), ("val", val)):
        got = np.fromfile(out / f"{split}.bin", np.uint32).astype(np.uint8).tobytes()
        assert got == expected[split] and ds.n_tokens == len(got)


def test_prepare_rejects_non_utf8_files_by_name(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\xff\xfe")
    with pytest.raises(ValueError, match=r"bad.txt is not UTF-8 text"):
        write_token_files([("bad.txt", bad)], tmp_path / "out")


def test_prepare_rejects_an_empty_split(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("tiny")
    with pytest.raises(ValueError, match=r"split of 1 file\(s\) has 0 tokens"):
        write_token_files([("small.txt", small)], tmp_path / "out")


@pytest.mark.parametrize(
    "setup, kwargs, error, message",
    [
        (None, {"path": "/no/such/dir"}, FileNotFoundError, r"'/no/such/dir' is not a directory .*train.bin and val.bin"),
        ("missing_val", {}, FileNotFoundError, r"val.bin does not exist \(expected flat uint16 tokens\)"),
        ("odd_bytes", {}, ValueError, r"train.bin has 5 bytes, not a multiple of 2 \(uint16\)"),
        ("short", {}, ValueError, r"train.bin has 3 tokens; windows of seq_len 8 need .* at least seq_len \+ 1"),
        ("meta_uint32", {"dtype": "uint16"}, ValueError, r"dtype 'uint16' contradicts .*meta.json \(dtype 'uint32'\)"),
        ("ok", {"dtype": "int8"}, ValueError, r"token dtype 'int8' is not supported; valid: \['uint8', 'uint16', 'uint32'\]"),
    ],
)
def test_token_file_errors_name_the_file_and_expectation(tmp_path, setup, kwargs, error, message):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "val.bin")
    if setup == "missing_val":
        (tmp_path / "val.bin").unlink()
    elif setup == "odd_bytes":
        (tmp_path / "train.bin").write_bytes(b"12345")
    elif setup == "short":
        np.arange(3, dtype=np.uint16).tofile(tmp_path / "train.bin")
    elif setup == "meta_uint32":
        (tmp_path / "meta.json").write_text(json.dumps({"dtype": "uint32"}))
    with pytest.raises(error, match=message):
        build_datasets("token_file", **{"path": str(tmp_path), "seq_len": 8, **kwargs})


def test_unknown_dataset_or_field_error_lists_valid_choices():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; valid: \['digits', 'image_folder', 'npz'"):
        build_datasets("cifar")
    with pytest.raises(ValueError, match=r"unknown StdlibTextConfig fields \['seqlen'\].*'seq_len'"):
        build_datasets("stdlib_text", seqlen=3)


def test_prepare_command_reports_a_missing_input_without_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--out", "/tmp/unused", "/no/such/input"])
    assert exit_info.value.code == 2
    assert "error: text input /no/such/input does not exist (expected a text file or a directory)" in capsys.readouterr().err


def _source_tree(root):
    """40 small .py files in nested folders, a .txt, a byte-identical copy and a non-UTF-8 file."""
    files = {f"pkg{i % 3}/sub{i % 2}/m{i}.py": f"# module {i}\n" + "x = 1\n" * (i + 5) for i in range(40)}
    files["pkg0/readme.txt"] = "not python\n" * 10
    files["zz/copy.py"] = files["pkg1/sub1/m1.py"]
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "pkg2" / "latin1.py").write_bytes(b"# caf\xe9\n")
    return files


def test_text_folders_split_by_whole_file_and_drop_copies_and_non_utf8(tmp_path):
    _source_tree(tmp_path / "src")
    train, val = build_datasets("text_folders", roots=[str(tmp_path / "src")], cache_dir=str(tmp_path / "cache"),
                                val_fraction=0.3, seq_len=8, exclude=["pkg0/sub0/*"])
    # independent expectation: the sorted matching files, each wholly on the side its key hashes to
    expected = {"train": b"", "val": b""}
    for path in sorted((tmp_path / "src").rglob("*.py")):
        key = path.relative_to(tmp_path / "src").as_posix()
        if key in ("zz/copy.py", "pkg2/latin1.py") or key.startswith("pkg0/sub0/"):
            continue
        expected["val" if _is_val_block(key, 0, 0.3) else "train"] += path.read_bytes()
    assert expected["train"] and expected["val"]
    for split, ds in (("train", train), ("val", val)):
        assert ds.dtype == np.uint8 and ds.vocab_size == 256
        assert np.fromfile(ds.path, np.uint8).tobytes() == expected[split]
    meta = json.loads((train.path.parent / "meta.json").read_text())
    assert meta["duplicates"] == 1 and meta["skipped_non_utf8"] == ["pkg2/latin1.py"]
    assert meta["bytes"] == len(expected["train"]) + len(expected["val"]) == meta["train_tokens"] + meta["val_tokens"]


def test_text_folders_split_does_not_depend_on_where_the_folder_is(tmp_path):
    for name in ("a", "b"):
        _source_tree(tmp_path / name)
    dirs = [prepare_text_folders([str(tmp_path / name)], cache_dir=tmp_path / "cache", val_fraction=0.3) for name in "ab"]
    assert dirs[0] != dirs[1]  # keyed by path: two cache entries ...
    for split in ("train.bin", "val.bin"):  # ... with the same split
        assert (dirs[0] / split).read_bytes() == (dirs[1] / split).read_bytes()


def test_text_folders_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path):
    files = _source_tree(tmp_path / "src")
    build = lambda: prepare_text_folders([str(tmp_path / "src")], cache_dir=tmp_path / "cache", val_fraction=0.3)
    first = build()
    mtime = (first / "train.bin").stat().st_mtime_ns
    assert build() == first and (first / "train.bin").stat().st_mtime_ns == mtime
    (tmp_path / "src" / "pkg1" / "new.py").write_text("y = 2\n" * 50)
    second = build()
    assert second != first
    total = sum(len(t.encode()) for k, t in files.items() if k.endswith(".py") and k != "zz/copy.py") + 6 * 50
    assert json.loads((second / "meta.json").read_text())["bytes"] == total


@pytest.mark.parametrize(
    "roots, error, message",
    [
        (["MISSING"], FileNotFoundError, r"text folder '.*MISSING' \(.*MISSING\) does not exist or is not a directory"),
        (["EMPTY"], ValueError, r"text folder '.*EMPTY' \(.*EMPTY\) has no files matching globs \['\*.py'\]"),
        ([], ValueError, r"text_folders needs a non-empty list of folders \(roots\), got \[\]"),
        (["sysconfig:sitepackages"], ValueError, r"unknown sysconfig path 'sitepackages'; valid: .*'sysconfig:purelib'"),
    ],
)
def test_text_folders_errors_name_the_folder(tmp_path, roots, error, message):
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "EMPTY" / "notes.txt").write_text("no python here")
    roots = [str(tmp_path / r) if r.isupper() else r for r in roots]
    with pytest.raises(error, match=message):
        build_datasets("text_folders", roots=roots, cache_dir=str(tmp_path / "cache"))


def test_sysconfig_folder_names_resolve_to_this_interpreters_paths():
    import sysconfig

    assert resolve_folder("sysconfig:purelib") == Path(sysconfig.get_paths()["purelib"]).resolve()


def test_folders_command_prints_the_corpus_size(tmp_path, capsys):
    _source_tree(tmp_path / "src")
    main(["folders", str(tmp_path / "src"), "--cache-dir", str(tmp_path / "cache"), "--val-fraction", "0.3",
          "--glob", "pkg1/*"])
    out = capsys.readouterr().out
    size = sum(p.stat().st_size for p in (tmp_path / "src" / "pkg1").rglob("*.py"))
    assert f"{size:,} bytes: " in out and "byte-identical copies dropped" in out
