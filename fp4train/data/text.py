"""Byte-level language-model data: token files and random-offset windows over them.

Tokens are the raw UTF-8 bytes of the text (vocabulary 256), stored flat as ``uint16`` (or
``uint32``) in ``train.bin`` / ``val.bin`` with a ``meta.json`` beside them — the nanoGPT
``prepare.py`` convention. The default corpus is the Python standard library's own non-test
``.py`` sources (~11 MB, on every machine with Python). Write token files from your own text with

    python -m fp4train.data.text prepare --out DIR [--dtype uint16] FILES_OR_DIRS...

``text_folders`` reads every file matching some globs (default ``*.py``) under given folders, e.g.
the installed site-packages (``sysconfig:purelib``), as one byte corpus (uint8), cached the same way:

    python -m fp4train.data.text folders [--glob '*.py'] [--exclude PATTERN] FOLDERS...

Train/val split: each file is cut into blocks of ``block_size`` bytes and a block goes to val when
the hash of (file key, block index) falls below ``val_fraction`` — deterministic, independent of
the machine and of the order of files, and usable on a single file. ``text_folders`` splits by
whole file (no file in both splits) after dropping byte-identical copies of a file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import sysconfig
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

try:
    import fcntl
except ImportError:  # not on Windows: concurrent builds then race harmlessly (temporary names, renames)
    fcntl = None

log = logging.getLogger(__name__)
VOCAB_SIZE = 256
TOKEN_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}
STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages"})
DEFAULT_SUFFIXES = (".txt", ".md", ".rst", ".py")
DEFAULT_GLOBS = ("*.py",)
SYSCONFIG_PREFIX = "sysconfig:"
SPLIT_FORMAT_VERSION = 1  # part of the stdlib cache key: bump when the split or layout changes


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$FP4TRAIN_CACHE``, else ``~/.cache/fp4train``."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("FP4TRAIN_CACHE") or Path.home() / ".cache" / "fp4train")


def stdlib_sources(stdlib_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """(relative key, path) of the standard library's ``.py`` files, sorted, skipping any path
    under a directory named test, tests, idlelib or site-packages."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"standard library directory {root} does not exist")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_SKIP_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath, name)
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _files_under(folder: Path, globs: Sequence[str], exclude: Sequence[str] = ()) -> list[tuple[str, Path]]:
    """(path relative to ``folder``, path) of the files under ``folder`` whose relative path matches
    one of ``globs`` and none of ``exclude`` (``fnmatchcase``: ``*`` also matches ``/``, so ``*.py``
    is every ``.py`` file at any depth). Symlinked directories are not followed."""
    found = []
    prefix = len(str(folder)) + 1
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            rel = path[prefix:].replace(os.sep, "/")
            if any(fnmatchcase(rel, g) for g in globs) and not any(fnmatchcase(rel, g) for g in exclude):
                if os.path.isfile(path):
                    found.append((rel, Path(path)))
    return found


def text_sources(inputs: list[str | os.PathLike], suffixes=DEFAULT_SUFFIXES) -> list[tuple[str, Path]]:
    """(key, path) of the given files, plus the files with one of ``suffixes`` under the given
    directories (recursively); keys are paths relative to the directory given, or file names."""
    found = []
    for item in map(Path, inputs):
        if item.is_file():
            found.append((item.name, item))
        elif item.is_dir():
            found += _files_under(item, [f"*{s}" for s in suffixes])
        else:
            raise FileNotFoundError(f"text input {item} does not exist (expected a text file or a directory)")
    if not found:
        raise ValueError(f"no text files with suffixes {list(suffixes)} under {[str(i) for i in inputs]}")
    return sorted(found)


def resolve_folder(folder: str) -> Path:
    """The absolute path of ``folder``: a path (``~`` expanded) or ``sysconfig:NAME``, the
    interpreter's ``sysconfig.get_paths()[NAME]`` (``sysconfig:purelib``: the site-packages)."""
    if folder.startswith(SYSCONFIG_PREFIX):
        name, paths = folder[len(SYSCONFIG_PREFIX):], sysconfig.get_paths()
        if name not in paths:
            raise ValueError(
                f"text folder {folder!r}: unknown sysconfig path {name!r}; "
                f"valid: {[SYSCONFIG_PREFIX + n for n in sorted(paths)]}"
            )
        return Path(paths[name]).resolve()
    return Path(folder).expanduser().resolve()


def folder_sources(
    folders: Sequence[str], globs: Sequence[str] = DEFAULT_GLOBS, exclude: Sequence[str] = ()
) -> list[tuple[str, Path]]:
    """(key, path) of the files matching ``globs`` and not ``exclude`` under each of ``folders``
    (see ``resolve_folder``, ``_files_under``), sorted; the key is the path relative to its
    folder, so the split does not depend on where the folder is installed. Every folder must
    exist and hold at least one matching file."""
    if isinstance(folders, str) or not folders:
        raise ValueError(f"text_folders needs a non-empty list of folders (roots), got {folders!r}")
    if isinstance(globs, str) or not globs:
        raise ValueError(f"text_folders needs a non-empty list of globs, got {globs!r}")
    found = []
    for folder, path in dict.fromkeys((f, resolve_folder(f)) for f in folders):
        if not path.is_dir():
            raise FileNotFoundError(f"text folder {folder!r} ({path}) does not exist or is not a directory")
        files = _files_under(path, globs, exclude)
        if not files:
            raise ValueError(
                f"text folder {folder!r} ({path}) has no files matching globs {list(globs)}"
                + (f" outside exclude {list(exclude)}" if exclude else "")
            )
        found += files
    return sorted(found)


def _is_val_block(key: str, index: int, val_fraction: float) -> bool:
    digest = hashlib.sha256(f"{key}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < val_fraction


def write_token_files(
    sources: list[tuple[str, Path]],
    out_dir: str | os.PathLike,
    dtype: str = "uint16",
    val_fraction: float = 0.05,
    block_size: int | None = 16384,
    *,
    dedup: bool = False,
    skip_non_utf8: bool = False,
) -> dict:
    """Write the UTF-8 bytes of ``sources`` as ``train.bin``/``val.bin`` tokens plus ``meta.json``.

    ``block_size=None`` splits by whole file: ``_is_val_block(key, 0, val_fraction)`` sends each
    file to one side. ``dedup`` drops a file whose bytes equal an earlier source's (so no copy of
    a file lands in both splits); ``skip_non_utf8`` leaves out files that are not UTF-8 instead of
    refusing them. Both are counted in the meta (``duplicates``, ``skipped_non_utf8``), as are the
    corpus ``bytes``. Files are streamed to temporary names and renamed, ``meta.json`` last, so a
    directory with ``meta.json`` is complete even when several processes prepare it at once.
    """
    if dtype not in TOKEN_DTYPES:
        raise ValueError(f"token dtype {dtype!r} is not supported; valid: {list(TOKEN_DTYPES)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1 byte or None (whole files), got {block_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = {split: out / f"{split}.bin.tmp{os.getpid()}" for split in ("train", "val")}
    counts = {"train": 0, "val": 0}
    seen: set[bytes] = set()
    duplicates, skipped = 0, []
    try:
        with tmp["train"].open("wb") as train_file, tmp["val"].open("wb") as val_file:
            files = {"train": train_file, "val": val_file}
            for key, path in sources:
                data = path.read_bytes()
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError as e:
                    if skip_non_utf8:
                        skipped.append(key)
                        continue
                    raise ValueError(f"{path} is not UTF-8 text ({e}); byte-level data expects text files") from None
                if dedup:
                    digest = hashlib.sha256(data).digest()
                    if digest in seen:
                        duplicates += 1
                        continue
                    seen.add(digest)
                step = block_size or max(len(data), 1)
                for i in range(0, len(data), step):
                    split = "val" if _is_val_block(key, i // step, val_fraction) else "train"
                    chunk = np.frombuffer(data[i : i + step], dtype=np.uint8)
                    files[split].write(chunk.astype(TOKEN_DTYPES[dtype], copy=False).tobytes())
                    counts[split] += chunk.size
        for split, count in counts.items():
            if count < 2:
                raise ValueError(
                    f"the {split} split of {len(sources)} file(s) has {count} tokens: give more text, "
                    + (f"a smaller block_size (now {block_size}) or " if block_size else "")
                    + f"another val_fraction (now {val_fraction})"
                )
        for split in tmp:
            os.replace(tmp[split], out / f"{split}.bin")
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    meta = {"tokenizer": "bytes", "vocab_size": VOCAB_SIZE, "dtype": dtype, "n_files": len(sources),
            "train_tokens": counts["train"], "val_tokens": counts["val"], "bytes": sum(counts.values())}
    if dedup:
        meta["duplicates"] = duplicates
    if skip_non_utf8:
        meta["skipped_non_utf8"] = skipped
    tmp_meta = out / f"meta.json.tmp{os.getpid()}"
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, out / "meta.json")
    return meta


@contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<out>/build.lock`` (where ``fcntl`` exists), so that processes
    started together (ranks, a parallel sweep's jobs) build a cache entry once, the others waiting."""
    out.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(out / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cache_key(parts: list) -> str:
    return hashlib.sha256(json.dumps([SPLIT_FORMAT_VERSION, *parts]).encode()).hexdigest()[:12]


def prepare_stdlib(
    cache_dir: str | os.PathLike | None = None, val_fraction: float = 0.05, block_size: int = 16384
) -> Path:
    """Token files of the standard-library corpus, built once under the cache and reused.

    The cache key covers the Python version, the file list and sizes and the split settings."""
    sources = stdlib_sources()
    key = _cache_key([val_fraction, block_size, [(k, p.stat().st_size) for k, p in sources]])
    out = cache_root(cache_dir) / f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}-{key}"
    with _build_lock(out):
        if not (out / "meta.json").is_file():
            write_token_files(sources, out, "uint16", val_fraction, block_size)
    return out


def prepare_text_folders(
    folders: Sequence[str],
    globs: Sequence[str] = DEFAULT_GLOBS,
    exclude: Sequence[str] = (),
    cache_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.05,
) -> Path:
    """uint8 token files of ``folder_sources(folders, globs, exclude)``, split by whole file after
    dropping byte-identical copies and skipping non-UTF-8 files, built once under the cache as
    ``folders-<key>`` and reused; the key covers the split settings and every file's key, path,
    size and modification time (a changed, added or removed file builds a new entry)."""
    sources = folder_sources(folders, globs, exclude)
    stats = [(k, str(p), st.st_size, st.st_mtime_ns) for k, p in sources for st in (p.stat(),)]
    out = cache_root(cache_dir) / f"folders-{_cache_key(['text_folders', val_fraction, stats])}"
    with _build_lock(out):
        if not (out / "meta.json").is_file():
            write_token_files(sources, out, "uint8", val_fraction, None, dedup=True, skip_non_utf8=True)
    return out


def corpus_summary(directory: Path) -> str:
    """One line on a prepared corpus: files, bytes per split, duplicates and files left out."""
    meta = json.loads((directory / "meta.json").read_text())
    total = meta.get("bytes", meta["train_tokens"] + meta["val_tokens"])
    line = (f"{meta['n_files']:,} files, {total:,} bytes: {meta['train_tokens']:,} train / "
            f"{meta['val_tokens']:,} val ({directory})")
    if "duplicates" in meta:
        line += f"; {meta['duplicates']:,} byte-identical copies dropped"
    if meta.get("skipped_non_utf8"):
        line += f"; {len(meta['skipped_non_utf8'])} non-UTF-8 files left out: {meta['skipped_non_utf8'][:5]}"
    return line


class TokenWindows(Dataset):
    """Windows ``(x[t:t+L], x[t+1:t+L+1])`` (int64) over a flat token file.

    With ``random_offsets`` the offset of item i is drawn from a generator seeded by (seed, i), so
    an index always gives the same window; otherwise items are ``num_samples`` evenly spaced windows
    (by default the (n-1)//L non-overlapping ones). Offsets satisfy t + L + 1 <= n: never past the
    end. The file is memory-mapped lazily, per process (safe with DataLoader workers).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        seq_len: int,
        dtype: str = "uint16",
        num_samples: int | None = None,
        random_offsets: bool = True,
        seed: int = 0,
        vocab_size: int | None = None,
    ) -> None:
        self.path, self.seq_len, self.seed, self.vocab_size = Path(path), seq_len, seed, vocab_size
        if dtype not in TOKEN_DTYPES:
            raise ValueError(f"token dtype {dtype!r} is not supported; valid: {list(TOKEN_DTYPES)}")
        self.dtype = np.dtype(TOKEN_DTYPES[dtype])
        if not self.path.is_file():
            raise FileNotFoundError(f"token file {self.path} does not exist (expected flat {dtype} tokens)")
        size = self.path.stat().st_size
        if size % self.dtype.itemsize:
            raise ValueError(
                f"token file {self.path} has {size} bytes, not a multiple of {self.dtype.itemsize} "
                f"({dtype}); is the dtype right? valid: {list(TOKEN_DTYPES)}"
            )
        self.n_tokens = size // self.dtype.itemsize
        if seq_len < 1 or self.n_tokens < seq_len + 1:
            raise ValueError(
                f"token file {self.path} has {self.n_tokens} tokens; windows of seq_len {seq_len} "
                f"need seq_len >= 1 and at least seq_len + 1 tokens"
            )
        self.max_offset = self.n_tokens - seq_len - 1
        self.num_samples = (self.n_tokens - 1) // seq_len if num_samples is None else num_samples
        self.random_offsets = random_offsets
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return self.num_samples

    def offset(self, index: int) -> int:
        if self.random_offsets:
            return int(np.random.default_rng((self.seed, index)).integers(0, self.max_offset + 1))
        return index * self.max_offset // max(self.num_samples - 1, 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} windows")
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        t = self.offset(index)
        window = torch.from_numpy(self._tokens[t : t + self.seq_len + 1].astype(np.int64))
        return window[:-1], window[1:]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}


@dataclass
class WindowsConfig:
    """Windows of a token corpus split into train and validation: ``seq_len`` tokens per window,
    ``train_samples``/``val_samples`` windows per epoch (None: (n-1)//seq_len), train windows at
    random offsets seeded by ``seed``, val windows evenly spaced."""

    seq_len: int = 256
    train_samples: int | None = None
    val_samples: int | None = None
    seed: int = 0


@dataclass
class ByteWindowsConfig(WindowsConfig):
    """``WindowsConfig`` over a byte corpus that fp4train prepares: ``val_fraction`` of it held
    out, the prepared tokens cached under ``cache_dir`` (None: the default cache)."""

    cache_dir: str | None = None
    val_fraction: float = 0.05


@dataclass
class StdlibTextConfig(ByteWindowsConfig):
    """The standard-library byte corpus (``ByteWindowsConfig``'s windows), held out in blocks of
    ``block_size`` bytes."""

    block_size: int = 16384


@dataclass
class TextFoldersConfig(ByteWindowsConfig):
    """Every file matching ``globs`` (and no ``exclude`` pattern) under ``roots``, as bytes.
    ``roots``: paths or ``sysconfig:NAME`` (default: this interpreter's site-packages); patterns
    match the path relative to its root (``*`` also matches ``/``). Windows as in
    ``ByteWindowsConfig``; the split is by whole file (``prepare_text_folders``)."""

    roots: list[str] = field(default_factory=lambda: [SYSCONFIG_PREFIX + "purelib"])
    globs: list[str] = field(default_factory=lambda: list(DEFAULT_GLOBS))
    exclude: list[str] = field(default_factory=list)


@dataclass
class TokenFileConfig(WindowsConfig):
    """A directory with ``train.bin``/``val.bin`` (and optionally ``meta.json``, which supplies
    ``dtype`` and ``vocab_size`` when they are not given here; default dtype uint16); windows as
    in ``WindowsConfig``."""

    path: str = ""
    dtype: str | None = None
    vocab_size: int | None = None


def _windows(directory: Path, dtype: str, vocab_size: int | None, cfg: WindowsConfig) -> tuple[TokenWindows, TokenWindows]:
    return (
        TokenWindows(directory / "train.bin", cfg.seq_len, dtype, cfg.train_samples, True, cfg.seed, vocab_size),
        TokenWindows(directory / "val.bin", cfg.seq_len, dtype, cfg.val_samples, False, cfg.seed, vocab_size),
    )


def stdlib_text_datasets(cfg: StdlibTextConfig) -> tuple[TokenWindows, TokenWindows]:
    return _windows(prepare_stdlib(cfg.cache_dir, cfg.val_fraction, cfg.block_size), "uint16", VOCAB_SIZE, cfg)


def text_folders_datasets(cfg: TextFoldersConfig) -> tuple[TokenWindows, TokenWindows]:
    start = time.perf_counter()
    directory = prepare_text_folders(cfg.roots, cfg.globs, cfg.exclude, cfg.cache_dir, cfg.val_fraction)
    log.info("text_folders %s: %s; loaded in %.1f s", list(cfg.roots), corpus_summary(directory),
             time.perf_counter() - start)
    return _windows(directory, "uint8", VOCAB_SIZE, cfg)


def token_file_datasets(cfg: TokenFileConfig) -> tuple[TokenWindows, TokenWindows]:
    directory = Path(cfg.path)
    if not cfg.path or not directory.is_dir():
        raise FileNotFoundError(
            f"token_file path {cfg.path!r} is not a directory (expected one holding train.bin and val.bin)"
        )
    meta_path = directory / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if cfg.dtype and meta.get("dtype", cfg.dtype) != cfg.dtype:
        raise ValueError(f"dtype {cfg.dtype!r} contradicts {meta_path} (dtype {meta['dtype']!r})")
    return _windows(directory, cfg.dtype or meta.get("dtype", "uint16"), cfg.vocab_size or meta.get("vocab_size"), cfg)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fp4train.data.text", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write train.bin/val.bin/meta.json from text files (byte-level)")
    prep.add_argument("inputs", nargs="+", help="text files, or directories searched for --suffix files")
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument("--dtype", default="uint16", choices=list(TOKEN_DTYPES))
    prep.add_argument("--val-fraction", type=float, default=0.05)
    prep.add_argument("--block-size", type=int, default=16384, help="bytes per split block")
    prep.add_argument("--suffix", action="append", help=f"suffixes searched in directories (default {DEFAULT_SUFFIXES})")
    folders = sub.add_parser("folders", help="build (or find) the cached text_folders corpus and print its size")
    folders.add_argument("roots", nargs="+", help="folders, or sysconfig:NAME (sysconfig:purelib: site-packages)")
    folders.add_argument("--glob", action="append", help=f"patterns of the paths to read (default {list(DEFAULT_GLOBS)})")
    folders.add_argument("--exclude", action="append", default=[], help="patterns of the paths to leave out")
    folders.add_argument("--val-fraction", type=float, default=0.05)
    folders.add_argument("--cache-dir", help="default $FP4TRAIN_CACHE, else ~/.cache/fp4train")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.command == "folders":
            directory = prepare_text_folders(
                args.roots, args.glob or DEFAULT_GLOBS, args.exclude, args.cache_dir, args.val_fraction
            )
            print(f"{corpus_summary(directory)}; {time.perf_counter() - start:.1f} s")
            return
        sources = text_sources(args.inputs, tuple(args.suffix) if args.suffix else DEFAULT_SUFFIXES)
        meta = write_token_files(sources, args.out, args.dtype, args.val_fraction, args.block_size)
    except (OSError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    print(f"wrote {args.out}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
          f"from {meta['n_files']} files ({args.dtype})")


if __name__ == "__main__":
    main()
