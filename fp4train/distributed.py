"""Training over several processes: DDP launched by ``torchrun`` or SLURM, and FSDP2 through Lightning.

``trainer.strategy`` (``conf/trainer/``):

* ``ddp`` — ``DistributedDataParallel``, one process per device. Started from outside by
  ``torchrun`` or ``srun`` (Lightning reads the TorchElastic or SLURM environment: ``RANK``,
  ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``), or, in a single run, by
  Lightning re-executing the command line once per extra rank. Under ``torchrun`` with
  ``trainer.devices=auto`` the processes per node and the node count come from ``torchrun``.
* ``ddp_spawn`` — the same DDP, processes spawned by Lightning (works inside a Hydra multirun).
* ``fsdp`` — FSDP2 (``torch.distributed.fsdp.fully_shard``; Zhao et al., "PyTorch FSDP",
  arXiv 2304.11277) through Lightning's ``ModelParallelStrategy`` on a one-dimensional
  data-parallel mesh over all processes: ``shard_model`` makes one shard unit per block and the
  root one of the rest (embedding, final norm, head). Each parameter is split along dim 0 across
  the ranks; a block's unit all-gathers its weights before the block's forward (and again before
  its backward) and reduce-scatters their gradients after it, so a ``QuantLinear`` quantizes the
  whole gathered weight (whole 16×16 blocks; NVFP4's per-tensor amax is the global one) and the
  optimizer updates the rank's shard of the FP32 master weights. Activations and gradients are the
  rank's own, as under DDP: their per-tensor amax and their SR bits are per rank.

Mixed precision under ``fsdp`` follows ``trainer.precision``: ``bf16-mixed`` (the GPU default) is
FSDP2's ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` — weights all-gathered and
used in BF16, gradients reduce-scattered in FP32 into FP32 shards — with Lightning's autocast
around it; ``32-true`` (the CPU default) keeps everything FP32. (Under DDP, ``bf16-mixed`` is
autocast alone: ``QuantLinear`` quantizes the FP32 master weight; under ``fsdp`` it quantizes the
BF16 copy of it, one more rounding, and returns its weight gradient in BF16.)

Sharded checkpoints: ``<name>.ckpt`` is a folder (``torch.distributed.checkpoint``, one file per
rank plus ``meta.pt``) that resumes under ``fsdp``. ``consolidate``
(``python -m fp4train.distributed consolidate DIR``) turns one into a single file shaped like a
one-process checkpoint; ``load_model_state`` reads the model's weights from either kind.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from fp4train.convert import find_blocks
from fp4train.methods import method_of
from fp4train.recipes import Recipe

__all__ = [
    "FSDP2Strategy", "build_strategy", "check_strategy", "check_sweep", "consolidate",
    "launch_topology", "load_model_state", "shard_model", "sharded_checkpoint_summary",
]

FSDP_PRECISIONS = ("32-true", "bf16-mixed")
MODULE_PREFIX = "model."  # the LightningModule holds the model as ``self.model``


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` (FSDP2 + tensor parallelism) with all processes in
    the data-parallel dimension and none in the tensor-parallel one: plain sharded data
    parallelism. The LightningModule's ``configure_model`` shards the model (``shard_model``)."""

    def __init__(self) -> None:
        super().__init__(save_distributed_checkpoint=True)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


def shard_model(model: nn.Module, mesh: Any, bf16: bool) -> None:
    """Apply FSDP2 in place: ``fully_shard`` on every block of ``model`` (``convert.find_blocks``),
    then on ``model`` itself (the rest). ``bf16``: ``MixedPrecisionPolicy(param_dtype=bf16,
    reduce_dtype=fp32)``, else FP32 throughout. ``mesh``: a one-dimensional device mesh."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    blocks = find_blocks(model)
    if blocks is None:
        raise ValueError(f"trainer.strategy=fsdp shards one unit per block; {type(model).__name__} has no block list "
                         "(model.blocks, .layers or .h)")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def build_strategy(strategy: str) -> str | ModelParallelStrategy:
    """What ``lightning.Trainer(strategy=...)`` gets: ``FSDP2Strategy`` for ``fsdp`` (Lightning's
    own ``"fsdp"`` is FSDP1, ``FullyShardedDataParallel``), the name itself otherwise."""
    return FSDP2Strategy() if strategy == "fsdp" else strategy


def _torchrun(env: Mapping[str, str]) -> bool:
    return "TORCHELASTIC_RUN_ID" in env  # what torch.distributed.is_torchelastic_launched reads


def launch_topology(devices: Any, num_nodes: int, env: Mapping[str, str] = os.environ) -> tuple[Any, int]:
    """``(devices, num_nodes)`` for the Trainer. Under ``torchrun`` with ``devices="auto"``:
    ``LOCAL_WORLD_SIZE`` processes per node on ``WORLD_SIZE / LOCAL_WORLD_SIZE`` nodes (a
    ``num_nodes`` other than 1 that disagrees is refused); otherwise as given."""
    if not (_torchrun(env) and devices == "auto"):
        return devices, num_nodes
    local, world = int(env["LOCAL_WORLD_SIZE"]), int(env["WORLD_SIZE"])
    nodes = world // local
    if num_nodes not in (1, nodes):
        raise ValueError(f"trainer.num_nodes={num_nodes} but torchrun started {world} processes, {local} per node "
                         f"({nodes} nodes); leave trainer.num_nodes at 1 or set it to {nodes}")
    return local, nodes


def check_strategy(strategy: str, precision: str | None, cuda_graph: bool, recipe: Recipe) -> None:
    """Refuse, before any process starts, what the strategies cannot run (``ValueError`` naming the
    setting): CUDA graphs beyond one process or DDP (``fp4train.cuda_graphs``), ``fsdp`` with a
    precision other than ``FSDP_PRECISIONS`` or with a recipe whose quantization method refuses
    sharded weights (``Method.sharding_refusal``, e.g. state kept per element of the whole weight)."""
    if cuda_graph:
        from fp4train.cuda_graphs import check_graph_strategy

        check_graph_strategy(strategy)
    if strategy != "fsdp":
        return
    if precision is not None and precision not in FSDP_PRECISIONS:
        raise ValueError(f"trainer.strategy=fsdp supports trainer.precision in {list(FSDP_PRECISIONS)} "
                         f"(bf16-mixed: FSDP2's bf16 parameters with fp32 reduction); got {precision!r}")
    method = method_of(recipe)
    refusal = method.sharding_refusal(recipe) if method is not None else None
    if refusal is not None:
        raise ValueError(f"trainer.strategy=fsdp does not support recipe {recipe.name!r}: {refusal}; use trainer=ddp")


def check_sweep(strategy: str, env: Mapping[str, str] = os.environ) -> None:
    """In a Hydra multirun, ``ddp``/``fsdp`` need a launcher that starts one process per rank for
    each job (hydra-submitit's SLURM launcher: ``SLURM_NTASKS`` is set). Hydra's basic launcher
    runs the jobs in this process, and Lightning would re-execute the whole sweep once per rank."""
    if strategy in ("ddp", "fsdp") and "SLURM_NTASKS" not in env:
        raise ValueError(
            f"trainer.strategy={strategy} in a Hydra multirun (-m) needs one process per rank per job, which only "
            "launcher=slurm provides; on one machine sweep with trainer=ddp_spawn, or run each job as its own "
            f"`torchrun ... -m fp4train.train trainer={strategy} ...` command"
        )


def consolidate(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the sharded checkpoint folder ``path`` (``trainer=fsdp``) as one file shaped like a
    one-process checkpoint: ``state_dict`` (full tensors, keys as in one process), the loops',
    callbacks' and schedulers' state, and ``optimizer_states`` with parameters numbered in the
    optimizer's order (``torch.optim.Optimizer.state_dict``'s form). ``out`` defaults to
    ``<path without .ckpt>.consolidated.ckpt``. Returns ``out``."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    path = Path(path)
    if not (path / ".metadata").is_file():
        raise ValueError(f"{path} is not a sharded checkpoint folder (no .metadata inside)")
    out = Path(out) if out is not None else path.with_name(path.name.removesuffix(".ckpt") + ".consolidated.ckpt")
    dcp_to_torch_save(path, out)
    sharded = torch.load(out, weights_only=False)
    checkpoint = torch.load(path / "meta.pt", weights_only=False)
    checkpoint["state_dict"] = sharded.pop("state_dict")
    n = sum(k.startswith("optimizer_") for k in sharded)
    checkpoint["optimizer_states"] = [_number_params(sharded.pop(f"optimizer_{i}")) for i in range(n)]
    torch.save(checkpoint, out)
    return out


def sharded_checkpoint_summary(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Size | None]]:
    """The non-tensor entries of the sharded checkpoint folder ``path`` (its ``meta.pt``: global
    step, loops, callbacks …) and the full shape of each entry of its state dict, read from the
    ``torch.distributed.checkpoint`` metadata alone (no tensor is loaded). A module's extra state,
    which DCP stores flattened as ``<name>._extra_state.<field>``, is one entry
    ``<name>._extra_state`` with shape ``None``, as a one-process state dict has it."""
    from torch.distributed.checkpoint import FileSystemReader

    path = Path(path)
    meta = torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
    shapes: dict[str, torch.Size | None] = {}
    prefix = "state_dict."
    for key, value in FileSystemReader(str(path)).read_metadata().state_dict_metadata.items():
        if key.startswith(prefix):
            name, extra, _ = key[len(prefix):].partition("._extra_state.")
            shapes[name + "._extra_state" if extra else name] = None if extra else getattr(value, "size", None)
    return meta, shapes


def _number_params(state: dict) -> dict:
    """An optimizer state dict keyed by parameter names (``get_optimizer_state_dict``) keyed by
    position in its parameter groups instead, as ``Optimizer.state_dict`` keys it."""
    index = {name: i for i, name in enumerate(n for g in state["param_groups"] for n in g["params"])}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def load_model_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model's state dict (keys of ``model.state_dict()``, full tensors) from a checkpoint file
    (one process, DDP, or ``consolidate``'s output) or a sharded folder (``trainer=fsdp``)."""
    path = Path(path)
    if path.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            state = torch.load(consolidate(path, Path(tmp) / "full.ckpt"), weights_only=False)["state_dict"]
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix(MODULE_PREFIX): v for k, v in state.items()}


def main(argv: list[str] | None = None) -> None:
    """``python -m fp4train.distributed consolidate DIR [--out FILE]``."""
    parser = argparse.ArgumentParser(prog="python -m fp4train.distributed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consolidate", help="a sharded checkpoint folder (trainer=fsdp) as one checkpoint file")
    c.add_argument("path", type=Path)
    c.add_argument("--out", type=Path, default=None, help="default: <path without .ckpt>.consolidated.ckpt")
    args = parser.parse_args(argv)
    print(consolidate(args.path, args.out))


if __name__ == "__main__":
    main()
