"""CUDA graphs for a model's training forward and backward (``trainer.cuda_graph=true``).

A quantized linear layer launches about 16 kernels per step, with Python work around each
(quantize plans, allocations, Triton's launcher). Small models spend more time in that host
work than on the GPU: on an H200 the NVFP4 ViT-small step took 121 ms eagerly and 33 ms
replayed from a graph (``experiments/bench/results/train_step.md``). A CUDA graph replays the
whole forward, and the whole backward, as one launch each (``torch.cuda.make_graphed_callables``).

What makes the quantized layers capturable: no host synchronisation in their forward or
backward, and SR bits keyed by a device counter (``fp4train.quant.streams``), so each replay
draws the next step's bits — the bits the eager run draws. (The replayed step can still differ
from the eager one where PyTorch runs other kernels under capture: the hybrid LM's losses do,
bf16 included; the ViT's and stacked ``QuantLinear``s' are equal bit for bit. NOTES.md v8.)

A graph is valid for the input shapes it was captured with and for the Python-side choices its
modules made then (a precision schedule's switch, a method's choice of weight rounding):
``graph_key`` names those choices, and a changed key means capturing again. A replay runs no
Python, so module hooks would not fire: steps with hooks registered run eagerly (``has_hooks``).
"""

from __future__ import annotations

import contextlib
import gc

import torch
from torch import nn

__all__ = ["TrainingGraph", "capture_training_graph", "check_graph_strategy", "graph_key", "has_hooks"]


class _Forward(nn.Module):
    """``model``'s forward behind a module of its own: ``make_graphed_callables`` patches the
    forward of the module it is given, and ``model`` keeps its own (for eval) and its state dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model(*args)


def graph_key(model: nn.Module) -> tuple:
    """The Python-side state a captured graph of ``model`` depends on: each module's
    ``graph_key()``, for the modules that define one (``QuantLinear``: its high-precision GEMMs)."""
    return tuple(m.graph_key() for m in model.modules() if hasattr(m, "graph_key"))


class TrainingGraph:
    """A captured training forward and backward (``capture_training_graph``): call it like the
    model. The backward graph writes the parameters' gradients into static buffers, which the
    next replay overwrites; autograd would keep such a buffer as ``p.grad`` when ``p.grad`` is
    unset, so a second micro-batch (gradient accumulation) would overwrite the first one's
    gradient and then add itself again. A hook on each parameter hands autograd a copy instead
    (one copy of the gradients per backward). ``release()`` removes the hooks and frees the
    graphs' memory."""

    def __init__(self, graphed: nn.Module, model: nn.Module, params: list[nn.Parameter]) -> None:
        self._graphed, self._model = graphed, model
        self._hooks = [p.register_hook(torch.clone) for p in params]

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if not (self._model.training and torch.is_grad_enabled()):
            raise RuntimeError(
                "a TrainingGraph replays the training step (and advances the SR step counters): "
                "call the model itself in eval mode or without gradients"
            )
        return self._graphed(*args)

    def release(self) -> None:
        """Remove the gradient hooks and free the graphs' memory (before capturing the model
        again, or when training ends). ``make_graphed_callables`` patches the wrapper's
        ``forward`` with a closure over the wrapper, a reference cycle that would keep both
        graphs' memory pools until the garbage collector runs."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self._graphed is not None:
            self._graphed.__dict__.pop("forward", None)
            self._graphed = None
        gc.collect()


def check_graph_strategy(strategy: str) -> None:
    """CUDA-graph training runs in one process or under DDP; ``ValueError`` naming the strategy
    otherwise (``trainer.strategy``: ``auto``/``single_device``, or a ``ddp`` variant).

    Under DDP this is PyTorch's *partial-network capture* (CUDA semantics notes, "Usage with
    DistributedDataParallel"): the model's forward and backward are graphed, DDP's gradient
    all-reduce is not. DDP reduces through hooks on the parameters' gradient accumulators; the
    graphed backward is one autograd node that hands every parameter its gradient when it ends,
    so the hooks fire then and the buckets are all-reduced eagerly after the replayed backward
    (no overlap of communication with the backward compute). ``make_graphed_callables``'
    warm-up and capture passes take gradients with ``torch.autograd.grad``, which runs no
    gradient accumulator, so they reduce nothing. Only the inner model is graphed, never the DDP
    wrapper, so DDP's own forward (buffer broadcast, ``prepare_for_backward``) stays eager.

    FSDP is refused: its all-gathers and reduce-scatters run in hooks on each block, which a
    replay would skip (a capture of them would need the collectives inside the graph)."""
    if strategy in ("auto", "single_device") or strategy.startswith("ddp"):
        return
    raise ValueError(
        f"trainer.cuda_graph=true runs in one process or under DDP (trainer=ddp, trainer=ddp_spawn); "
        f"trainer.strategy={strategy!r} is not supported"
        + (": FSDP gathers each block's weights in module hooks, which a graph replay skips" if strategy == "fsdp" else "")
    )


def has_hooks(model: nn.Module) -> bool:
    """Whether a forward or backward hook is registered on ``model`` or a submodule: a replay runs
    no Python, so it would skip the hook (callers run such steps eagerly; e.g. the quant-stats
    logger hooks the layers' inputs on its logging steps)."""
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in model.modules())


def capture_training_graph(model: nn.Module, sample: tuple[torch.Tensor, ...]) -> TrainingGraph:
    """``model``'s training forward and backward captured in CUDA graphs for inputs shaped like
    ``sample``: calling the result copies the inputs into the graph's and replays it; backward
    replays the backward graph, and parameters get their gradients as usual (accumulating over
    micro-batches included: ``TrainingGraph``).

    Under ``torch.autocast`` the capture runs with autocast's weight-cast cache off (a cached
    cast would be captured as a constant). ``make_graphed_callables`` runs three warm-up passes
    and a capture pass: ``model``'s buffers (SR step counters, running statistics) are restored
    afterwards, so the first replay continues where an eager step would.
    """
    if not model.training:
        raise ValueError("capture_training_graph captures the training forward: call model.train() first")
    if not sample or not all(isinstance(t, torch.Tensor) and t.is_cuda for t in sample):
        got = [f"{type(t).__name__} on {getattr(t, 'device', '-')}" for t in sample]
        raise ValueError(f"CUDA graphs capture CUDA inputs only; got {got}")
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    autocast = torch.is_autocast_enabled("cuda")
    no_cache = (
        torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
        if autocast else contextlib.nullcontext()
    )
    try:
        with no_cache:
            graphed = torch.cuda.make_graphed_callables(_Forward(model), sample, allow_unused_input=True)
    except RuntimeError as e:
        raise RuntimeError(
            f"capturing {type(model).__name__}'s training step in a CUDA graph failed: {e}\n"
            "A captured model must run without host synchronisation (.item(), printing tensors, "
            "data-dependent shapes) and without host-to-device copies of pageable memory; "
            "train it eagerly with trainer.cuda_graph=false"
        ) from e
    finally:  # the warm-up passes advanced the buffers, also when the capture failed
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
    return TrainingGraph(graphed, model, [p for p in model.parameters() if p.requires_grad])
