"""Launching Triton kernels with less host (CPU) time per call.

``kernel[grid](*args, **kwargs)`` costs about 35-40 µs of host time per launch with the argument
lists of our kernels (``experiments/bench/host_cost.py`` on the lent H200's host): Triton binds
the arguments, computes a specialization for each of them, builds a cache key from it, and checks
the globals the kernel reads. A small layer issues 10-15 launches per training step, so that cost,
not the GPU, bounds the step of small models.

``launch`` keeps the compiled kernel of each distinct call signature and launches it directly
(``CompiledKernel[grid](*args)``, Triton's own runner) from the second call on. Its key holds
everything Triton's specialization can depend on, and more: each tensor's dtype and whether its
address is 16-byte aligned, the exact value of each integer argument (its int32/int64 range for
``do_not_specialize`` ones), the constexprs and the launch options. Equal keys therefore mean
equal Triton specializations, i.e. the same compiled kernel; the first call with a new key goes
through Triton's normal path, which compiles (or finds) it. Integer arguments are usually sizes,
so the cache holds one entry per shape a program uses. Triton's process-wide settings
(``triton.knobs``) must not change after the first launch; they do not in this package.

Under Triton's interpreter (``TRITON_INTERPRET=1``, the CPU tests) every call takes the normal
path.
"""

from __future__ import annotations

from typing import Any

import torch
from triton.runtime.jit import JITFunction

__all__ = ["launch"]

_COMPILED: dict[tuple, Any] = {}
_LAYOUTS: dict[tuple[JITFunction, int], tuple[tuple[bool, ...], tuple[str, ...]]] = {}


def _layout(kernel: JITFunction, n_args: int) -> tuple[tuple[bool, ...], tuple[str, ...]]:
    """Whether Triton specializes each of the first ``n_args`` parameters, and the names of the
    rest, which must all be constexprs (passed by name)."""
    key = (kernel, n_args)
    if key not in _LAYOUTS:
        rest = kernel.params[n_args:]
        if not all(p.is_constexpr for p in rest):
            runtime = [p.name for p in rest if not p.is_constexpr]
            raise TypeError(f"launch: pass the runtime parameters of {kernel.fn.__name__} positionally; got {runtime} by name")
        _LAYOUTS[key] = tuple(not p.do_not_specialize for p in kernel.params[:n_args]), tuple(p.name for p in rest)
    return _LAYOUTS[key]


def _arg_key(arg: Any, specialize: bool) -> Any:
    """What Triton may specialize ``arg`` on, or a finer description of it."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool) or arg is None:
        return arg
    if isinstance(arg, int):
        return arg if specialize else (-(2**31) <= arg < 2**31, -(2**63) <= arg < 2**63)
    if isinstance(arg, float):
        return float
    raise TypeError(f"launch: unsupported kernel argument type {type(arg).__name__}")


def launch(kernel: JITFunction, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``, where ``args`` are the kernel's runtime parameters in
    order and ``kwargs`` its constexprs by name plus launch options (``num_warps``, ``num_stages``,
    ``enable_fp_fusion``); see the module docstring for the cache."""
    if not isinstance(kernel, JITFunction):  # the interpreter
        kernel[grid](*args, **kwargs)
        return
    specialize, names = _layout(kernel, len(args))
    try:
        constexprs = tuple(kwargs[n] for n in names)
    except KeyError as e:
        raise TypeError(f"launch: {kernel.fn.__name__} needs its constexpr {e} by name") from None
    options = tuple(sorted((k, v) for k, v in kwargs.items() if k not in names))
    key = (kernel, torch.cuda.current_device(), tuple(map(_arg_key, args, specialize)), constexprs, options)
    compiled = _COMPILED.get(key)
    if compiled is None:
        _COMPILED[key] = kernel[grid](*args, **kwargs)
        return
    compiled[tuple(grid) + (1,) * (3 - len(grid))](*args, *constexprs)
