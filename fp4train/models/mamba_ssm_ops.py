"""The optional ``mamba-ssm`` Triton kernels behind ``ssd_impl``, and the choice between them and
our PyTorch code.

The kernels (state-spaces/mamba 2.3.2.post1, the package of the Mamba-2 paper, arXiv 2405.21060):
``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined`` — the chunked SSD scan of
Mamba-2 §6 as Triton kernels, forward and backward, which adds ``dt_bias`` and applies the softplus
to dt itself (``dt_softplus=True``) and accumulates in float32 — and
``mamba_ssm.ops.triton.layernorm_gated.rmsnorm_fn``, the group-wise gated RMSNorm in one kernel.
The package ships as source; its ``__init__`` imports its CUDA extension, so it imports only where
it was built with CUDA (docs/models_and_data.md says how to install it). Beside them, the
``causal-conv1d`` package (Dao-AILab 1.7.0, which mamba_ssm's own ``Mamba2`` calls when installed):
``causal_conv1d_fn``, the depthwise causal conv1d and its SiLU in one CUDA kernel, forward and
backward — optional: without it the triton path runs the conv as ``F.conv1d``.

``ssd_impl``:

* ``"torch"``: our PyTorch scan (``models/mamba2.py``) in float32 — the CPU path, the test
  reference and the fallback;
* ``"triton"``: the package's kernels, on CUDA only; anything else is an error saying what is
  missing;
* ``"auto"``: triton on a CUDA input when the package imports, else torch; logs once which one ran
  and why.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable

import torch

__all__ = ["SSD_IMPLS", "causal_conv1d_kernel", "causal_conv1d_or_why", "check_ssd_impl", "mamba_ssm_kernels", "resolve_ssd_impl"]

log = logging.getLogger(__name__)

SSD_IMPLS = ("auto", "torch", "triton")
INSTALL_HINT = (
    "install the `gpu` extra on a CUDA machine (pip install einops; mamba-ssm==2.3.2.post1 builds from "
    "source with MAMBA_FORCE_BUILD=TRUE and --no-build-isolation: docs/models_and_data.md, "
    "experiments/bench/build_mamba_ssm.sh)"
)
_logged: set[str] = set()


def check_ssd_impl(impl: str) -> None:
    """Raise ``ValueError`` naming the valid choices unless ``impl`` is one of ``SSD_IMPLS``."""
    if impl not in SSD_IMPLS:
        raise ValueError(f"unknown ssd_impl {impl!r}; valid: {list(SSD_IMPLS)}")


def _import_or_why(*names: str) -> tuple[Callable, ...] | str:
    """The objects named ``"module:attribute"``, or why one of them does not import (a string)."""
    try:
        return tuple(getattr(importlib.import_module(module), attr) for module, attr in (n.split(":") for n in names))
    except (ImportError, AttributeError, OSError, RuntimeError) as e:  # a missing package, or its CUDA extension failing to load
        return f"{type(e).__name__}: {e}"


@functools.cache
def _import_kernels() -> tuple[Callable, Callable] | str:
    """The two kernels if mamba_ssm imports, else why not (a string); tried once per process."""
    return _import_or_why("mamba_ssm.ops.triton.ssd_combined:mamba_chunk_scan_combined",
                          "mamba_ssm.ops.triton.layernorm_gated:rmsnorm_fn")


def mamba_ssm_kernels() -> tuple[Callable, Callable]:
    """``(mamba_chunk_scan_combined, rmsnorm_fn)``; ``RuntimeError`` saying how to install them if
    mamba_ssm does not import."""
    kernels = _import_kernels()
    if isinstance(kernels, str):
        raise RuntimeError(
            f"ssd_impl='triton' needs mamba_ssm's Triton kernels, which do not import ({kernels}); "
            f"{INSTALL_HINT}; or use ssd_impl='auto' or 'torch'"
        )
    return kernels


@functools.cache
def _import_causal_conv1d() -> Callable | str:
    """``causal_conv1d_fn`` if the causal-conv1d package imports, else why not; tried once per process."""
    imported = _import_or_why("causal_conv1d:causal_conv1d_fn")
    return imported if isinstance(imported, str) else imported[0]


CAUSAL_CONV1D_WIDTHS = range(2, 5)  # the kernel's supported kernel widths (its csrc checks 2 <= width <= 4)


def causal_conv1d_or_why(width: int) -> Callable | str:
    """causal-conv1d's ``causal_conv1d_fn`` for a conv of ``width`` taps, or why it cannot run it: the
    package does not import (with how to install it), or ``width`` is outside the kernel's 2–4."""
    fn = _import_causal_conv1d()
    if isinstance(fn, str):
        return (f"causal-conv1d does not import: {fn}; for its fused CUDA kernel: pip install causal-conv1d==1.7.0 "
                "with CAUSAL_CONV1D_FORCE_BUILD=TRUE and --no-build-isolation (docs/models_and_data.md)")
    if width not in CAUSAL_CONV1D_WIDTHS:
        return f"causal-conv1d's kernel takes widths 2-4, got {width}"
    return fn


def causal_conv1d_kernel(width: int) -> Callable | None:
    """``causal_conv1d_fn(x (b, d, l), weight (d, width), bias, activation="silu")`` of the
    causal-conv1d package, or ``None`` — the caller then runs ``F.conv1d`` — when it cannot run this
    conv (``causal_conv1d_or_why``); logs once which."""
    fn = causal_conv1d_or_why(width)
    if isinstance(fn, str):
        _log_once(logging.INFO, f"Mamba-2 conv1d: F.conv1d ({fn})")
        return None
    _log_once(logging.INFO, "Mamba-2 conv1d: causal-conv1d's causal_conv1d_fn")
    return fn


def _log_once(level: int, message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.log(level, message)


def resolve_ssd_impl(impl: str, device: torch.device) -> str:
    """``"torch"`` or ``"triton"``: what ``impl`` runs as for an input on ``device`` (module doc)."""
    check_ssd_impl(impl)
    if impl == "torch":
        return "torch"
    if device.type != "cuda":
        if impl == "triton":
            raise RuntimeError(
                f"ssd_impl='triton' runs mamba_ssm's Triton kernels on CUDA only, got an input on {device.type}; "
                "use ssd_impl='auto' (the PyTorch scan off CUDA) or 'torch'"
            )
        _log_once(logging.INFO, f"Mamba-2 scan: torch (ssd_impl='auto', input on {device.type})")
        return "torch"
    if impl == "triton":
        mamba_ssm_kernels()  # raises, saying how to install them, if they do not import
        return "triton"
    kernels = _import_kernels()
    if isinstance(kernels, str):
        _log_once(logging.WARNING, f"Mamba-2 scan: torch, the slow float32 path (ssd_impl='auto': mamba_ssm "
                                   f"does not import: {kernels}); to use its Triton kernels, {INSTALL_HINT}")
        return "torch"
    _log_once(logging.INFO, "Mamba-2 scan: triton (ssd_impl='auto': mamba_ssm's mamba_chunk_scan_combined)")
    return "triton"
