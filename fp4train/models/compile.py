"""Regional compilation of a model's blocks (``model.compile_blocks=true``).

``torch.compile`` on each of ``model.blocks`` rather than on the whole model (PyTorch's "regional
compilation" recipe): the blocks of one kind share their compiled code, so compiling costs about
one block of each kind, and what runs between blocks stays plain Python. Inside a block, Inductor
fuses the element-wise work around the GEMMs (RMSNorm/LayerNorm, residual adds, activations).

Left eager, each behind ``torch.compiler.disable`` (a graph break at its call):

* every module of the types in ``eager`` (``train.py`` passes ``QuantLinear``: the quantized
  GEMMs keep their own Triton kernels and CPU emulation, untouched by Dynamo);
* the Mamba-2 mixer's ``mix`` (conv, scan and gated norm between its two GEMMs): mamba_ssm's
  Triton kernels with their autotuner are not Dynamo-traceable, and Inductor failed on our
  PyTorch scan (torch 2.11).
"""

from __future__ import annotations

import types

import torch
from torch import nn

from .mamba2 import Mamba2Mixer

__all__ = ["compile_blocks"]


def _run_eagerly(module: nn.Module, method: str) -> None:
    """Bind ``torch.compiler.disable(type(module).<method>)`` to ``module`` (a bound method, so that
    ``copy.deepcopy`` rebinds it to the copy)."""
    setattr(module, method, types.MethodType(torch.compiler.disable(getattr(type(module), method)), module))


def compile_blocks(model: nn.Module, eager: tuple[type[nn.Module], ...] = (), **compile_kwargs) -> nn.Module:
    """Compile each of ``model.blocks`` in place (``nn.Module.compile(**compile_kwargs)``), with
    modules of the ``eager`` types and the Mamba-2 scan left eager (module doc). Returns ``model``."""
    for module in model.blocks.modules():
        if eager and isinstance(module, eager):
            _run_eagerly(module, "forward")
        elif isinstance(module, Mamba2Mixer):
            _run_eagerly(module, "mix")
    for block in model.blocks:
        block.compile(**compile_kwargs)
    return model
