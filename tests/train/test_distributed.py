"""trainer=ddp (torchrun) and trainer=fsdp (FSDP2) on 2 CPU processes over gloo, against each other
and against one process, with NVFP4 on the tiny hybrid LM (blocks 0 and 1 quantized, block 2 BF16).

What equality to expect, and why:

* N ranks vs one process with N micro-batches (``accumulate_grad_batches=N``), the same global
  batch: bit for bit without SR and without gradient clipping. Each rank quantizes its own
  micro-batch as the one process does (NVFP4's per-tensor amax of activations and gradients is
  per micro-batch either way; weights are whole on every rank, gathered under FSDP), gradients
  are averaged as (g0 + g1) / 2 by both (a sum of two and a halving: exact), and AdamW is
  elementwise. One process on the whole batch in one micro-batch is *not* the same computation:
  its per-tensor amax spans both halves.
* With SR the ranks draw independent bits (rank 1 mixes its rank into its streams' keys), which
  a one-process run cannot draw: no equality with one process, but DDP and FSDP draw the same.
* With gradient clipping (``trainer.gradient_clip_val``, default 1.0) FSDP sums the global norm
  per shard and then across ranks, DDP per whole gradient: the clip factor differs in its last
  bits, and so do the weights (at most 1.2e-7 measured after 4 steps; tolerance 1e-6).
* A resumed run equals the uninterrupted one bit for bit, SR included (FSDP: a sharded checkpoint).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fp4train.convert import convert
from fp4train.cuda_graphs import check_graph_strategy
from fp4train.distributed import check_strategy, launch_topology, load_model_state
from fp4train.distributed import main as distributed_cli
from fp4train.models import build_model
from fp4train.recipes import RecipeConfig, build_recipe
from fp4train.train import DataConfig, LoggerConfig, ModelConfig, TrainConfig, TrainerConfig, train

from .conftest import REPO, TINY_LM, read_metrics, run_main

PROBE = "callbacks=[{_target_:tests.train.distributed_probe.DistributedProbe}]"
COMMON = [*TINY_LM, "quant=nvfp4", "data.batch_size=8", "trainer.max_steps=4", "trainer.accelerator=cpu",
          "trainer.torch_threads=1", PROBE]
EXACT = ["quant.sr=false", "trainer.gradient_clip_val=null"]  # the settings where one process is equal
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fp4train.train"]
TRAIN = [sys.executable, "-m", "fp4train.train"]
QUANTIZED = ["blocks.0.mixer.in_proj", "blocks.0.mixer.out_proj", "blocks.1.mixer.q_proj", "blocks.1.mixer.k_proj",
             "blocks.1.mixer.v_proj", "blocks.1.mixer.o_proj"]


def _start(command: list[str], run_dir: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    log = run_dir.with_suffix(".log")
    with open(log, "w") as f:
        proc = subprocess.Popen([*command, f"hydra.run.dir={run_dir}"], cwd=REPO, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _wait(started: tuple[subprocess.Popen, Path]) -> str:
    proc, log = started
    code = proc.wait(timeout=600)
    text = log.read_text()
    assert code == 0, text[-4000:]
    return text


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The runs the tests read (5 of 2 processes, 1 in this process), each made once, up to three
    at the same time; ``ddp_log``: the DDP run's output."""
    root = tmp_path_factory.mktemp("distributed")
    out: dict = {name: root / name for name in ("ddp", "fsdp", "ddp_resumed", "resumed", "fsdp_exact", "one_exact")}
    started = []
    try:
        started.append(ddp := _start([*TORCHRUN, *COMMON, "trainer=ddp", "checkpoint.every_n_steps=2"], out["ddp"]))
        # Lightning starts rank 1 itself (no torchrun): the other documented launch
        started.append(fsdp := _start([*TRAIN, *COMMON, "trainer=fsdp", "trainer.devices=2",
                                       "checkpoint.every_n_steps=2"], out["fsdp"]))
        started.append(exact := _start([*TORCHRUN, *COMMON, *EXACT, "trainer=fsdp"], out["fsdp_exact"]))
        threads = torch.get_num_threads()
        try:
            run_main(*COMMON, *EXACT, "trainer.accumulate_grad_batches=2", f"hydra.run.dir={out['one_exact']}")
        finally:
            torch.set_num_threads(threads)
        out["ddp_log"] = _wait(ddp)
        started.append(ddp_resumed := _start([*TORCHRUN, *COMMON, "trainer=ddp",
                                              f"checkpoint.resume={out['ddp'] / 'checkpoints' / 'step_2.ckpt'}"],
                                             out["ddp_resumed"]))
        _wait(fsdp)
        started.append(resumed := _start([*TORCHRUN, *COMMON, "trainer=fsdp",
                                          f"checkpoint.resume={out['fsdp'] / 'checkpoints' / 'step_2.ckpt'}"],
                                         out["resumed"]))
        _wait(exact)
        _wait(ddp_resumed)
        _wait(resumed)
    finally:  # after a failure, end the runs still going (their whole process groups)
        for proc, _ in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return out


def _probe(run: Path, rank: int) -> list[dict]:
    return json.loads((run / f"probe_rank{rank}.json").read_text())


def _losses_by_rank(run: Path) -> dict[tuple[int, int], float]:
    """{(micro-batch, rank): loss} of a 2-process run."""
    return {(r["batch_idx"], rank): r["loss"] for rank in (0, 1) for r in _probe(run, rank)}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = load_model_state(run / "checkpoints" / "last.ckpt")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def test_torchrun_ddp_and_fsdp_compute_the_same_steps_sr_bits_included(runs):
    """FSDP2 keeps DDP's numerics: each rank's SR streams, the gathered weight's quantization and
    the averaged gradients; only the clipping norm's summation order differs (module doc)."""
    log = runs["ddp_log"]
    assert "distributed_backend=gloo" in log and "MEMBER: 2/2" in log  # torchrun's 2 ranks, seen by Lightning
    ddp, fsdp = _losses_by_rank(runs["ddp"]), _losses_by_rank(runs["fsdp"])
    assert sorted(ddp) == [(b, r) for b in range(4) for r in (0, 1)]
    assert fsdp == pytest.approx(ddp, rel=1e-6, abs=0)
    assert ddp[(0, 0)] != ddp[(0, 1)]  # the ranks trained on different halves of the batch
    for key in ("train/loss", "val/loss"):
        assert read_metrics(runs["fsdp"], key) == pytest.approx(read_metrics(runs["ddp"], key), rel=1e-6, abs=0)
    a, b = _weights(runs["ddp"]), _weights(runs["fsdp"])
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)


def test_two_fsdp_processes_equal_one_process_with_two_micro_batches_bit_for_bit(runs):
    """Without SR and clipping (module doc): rank r's loss at step s is the one process's
    micro-batch r of step s, the validation losses and the final weights are equal."""
    fsdp = _losses_by_rank(runs["fsdp_exact"])
    one = _probe(runs["one_exact"], 0)
    assert len(one) == 8
    # Lightning hands on_train_batch_end the loss divided by accumulate_grad_batches (exact: a halving)
    assert {(r["batch_idx"] // 2, r["batch_idx"] % 2): r["loss"] * 2 for r in one} == fsdp
    assert read_metrics(runs["fsdp_exact"], "val/loss") == read_metrics(runs["one_exact"], "val/loss")
    a, b = _weights(runs["one_exact"]), _weights(runs["fsdp_exact"])
    assert a.keys() == b.keys()
    assert [name for name in a if not torch.equal(a[name], b[name])] == []
    # the SR step counters count forward calls: 2 per step in one process, 1 per step per rank
    full = load_model_state(runs["fsdp_exact"] / "checkpoints" / "last.ckpt")
    assert full["blocks.0.mixer.in_proj._extra_state"] == {"sr_step": 4}


@pytest.mark.parametrize("strategy, resumed", [("fsdp", "resumed"), ("ddp", "ddp_resumed")])
def test_a_resumed_run_equals_the_uninterrupted_run(runs, strategy, resumed):
    """From step 2 on, SR included: weights, optimizer, SR step counters and data order restored.
    FSDP's checkpoint is a sharded folder, DDP's rank 0's single file."""
    ckpt = runs[strategy] / "checkpoints" / "step_2.ckpt"
    assert ckpt.is_dir() == (strategy == "fsdp")
    if strategy == "fsdp":
        assert (ckpt / ".metadata").is_file()  # torch.distributed.checkpoint: one file per rank
    assert load_model_state(ckpt)["blocks.0.mixer.in_proj._extra_state"] == {"sr_step": 2}
    full = {k: v for k, v in _losses_by_rank(runs[strategy]).items() if k[0] >= 2}
    assert _losses_by_rank(runs[resumed]) == full
    for key in ("train/loss", "val/loss", "train/lr"):
        expected = {s: v for s, v in read_metrics(runs[strategy], key).items() if s >= 2}
        assert read_metrics(runs[resumed], key) == expected
    a, b = _weights(runs[strategy]), _weights(runs[resumed])
    assert [name for name in a if not torch.equal(a[name], b[name])] == []


def test_fsdp_quantizes_each_whole_weight_once_per_micro_batch(runs):
    """The measurement behind docs/training.md: per step and layer, one quantization of the
    gathered (not the sharded) weight, in forward; backward transposes that copy (NVFP4's 16×16
    weight blocks) although FSDP gathers the weight again for it. The same count as one process."""
    model = build_model("hybrid_lm", "micro", pattern="M*-", d_model=64, mamba_head_dim=8, mamba_d_state=16)
    shapes = {n: list(m.weight.shape) for n, m in model.named_modules() if n in QUANTIZED}
    for run, ranks in ((runs["fsdp"], (0, 1)), (runs["one_exact"], (0,))):
        for rank in ranks:
            records = _probe(run, rank)
            assert records and all(r["weight_quantizes"] == dict.fromkeys(QUANTIZED, 1) for r in records), run.name
            assert records[0]["weight_shapes"] == shapes


def test_a_sharded_checkpoint_consolidates_into_one_file_that_one_process_evaluates(runs, capsys):
    ckpt = runs["fsdp"] / "checkpoints" / "last.ckpt"
    distributed_cli(["consolidate", str(ckpt)])  # python -m fp4train.distributed consolidate DIR
    out = ckpt.with_name("last.consolidated.ckpt")
    assert capsys.readouterr().out.strip() == str(out)
    checkpoint = torch.load(out, weights_only=False)
    assert checkpoint["global_step"] == 4
    model = build_model("hybrid_lm", "micro", pattern="M*-", d_model=64, mamba_head_dim=8, mamba_d_state=16)
    convert(model, RecipeConfig("nvfp4", bf16_first_blocks=0, bf16_last_blocks=1))
    model.load_state_dict(load_model_state(out), strict=True)
    params = dict(model.named_parameters())
    optim = checkpoint["optimizer_states"][0]  # Optimizer.state_dict's form: parameters by number
    numbered = [i for g in optim["param_groups"] for i in g["params"]]
    assert sorted(numbered) == list(range(len(params))) == sorted(optim["state"])
    for i, name in enumerate(n for g in optim["param_groups"] for n in g["names"]):
        assert optim["state"][numbered[i]]["exp_avg"].shape == params[name].shape, name
    # the final validation loss, recomputed in one process: the 4 windows each rank validated on
    from fp4train.data import build_datasets

    _, val = build_datasets("stdlib_text", seq_len=32, val_samples=4)
    x, y = (torch.stack(t) for t in zip(*(val[i] for i in range(4))))
    with torch.no_grad():
        loss = F.cross_entropy(model.eval()(x).flatten(0, 1), y.flatten()).item()
    assert loss == pytest.approx(read_metrics(runs["fsdp"], "val/loss")[3], rel=1e-6)


@pytest.mark.parametrize("trainer, quant, message", [
    (dict(strategy="fsdp", cuda_graph=True), "nvfp4", "trainer.cuda_graph=true runs in one process or under DDP.*'fsdp'"),
    (dict(strategy="fsdp", precision="16-mixed"), "nvfp4", r"fsdp supports trainer.precision in \['32-true', 'bf16-mixed'\].*'16-mixed'"),
    (dict(strategy="fsdp"), "tetrajet_qema", "fsdp does not support recipe 'tetrajet_qema'.*use trainer=ddp"),
    (dict(strategy="deepspeed", cuda_graph=True), "nvfp4", "trainer.strategy='deepspeed' is not supported"),
])
def test_bad_combinations_fail_before_any_process_starts(tmp_path, monkeypatch, trainer, quant, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past the GPU check, on the CPU
    out = tmp_path / "run"
    cfg = TrainConfig(model=ModelConfig("hybrid_lm", "micro"), data=DataConfig("stdlib_text"),
                      quant=RecipeConfig(quant), trainer=TrainerConfig(accelerator="cpu", devices=2, **trainer),
                      logger=LoggerConfig(wandb=False), out_dir=str(out))
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert not out.exists()  # refused before the run directory, the model or any process


def test_ddp_and_one_process_may_use_cuda_graphs():
    for strategy in ("auto", "single_device", "ddp", "ddp_spawn"):
        check_graph_strategy(strategy)
        check_strategy(strategy, None, True, build_recipe("nvfp4"))


def test_ddp_in_a_local_multirun_is_refused_naming_the_launchers_that_work(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # Hydra re-raises the job's error instead of exiting
    with pytest.raises(ValueError, match="trainer.strategy=ddp in a Hydra multirun.*launcher=slurm.*ddp_spawn.*torchrun"):
        run_main(*TINY_LM, "trainer=ddp", f"hydra.sweep.dir={tmp_path}", multirun=True)


def test_torchrun_sets_the_process_counts_when_devices_is_auto():
    env = {"TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8"}
    assert launch_topology("auto", 1, env) == (4, 2)
    assert launch_topology("auto", 2, env) == (4, 2)
    assert launch_topology(2, 1, env) == (2, 1)  # set by hand: Lightning checks it against WORLD_SIZE
    assert launch_topology("auto", 1, {}) == ("auto", 1)  # no torchrun
    with pytest.raises(ValueError, match="trainer.num_nodes=3 but torchrun started 8 processes, 4 per node"):
        launch_topology("auto", 3, env)


def test_the_slurm_launcher_runs_ddp_by_default_and_fsdp_when_asked():
    from hydra import compose, initialize_config_dir

    from fp4train.train import CONF_DIR

    for overrides, strategy in ((["launcher=slurm"], "ddp"), (["launcher=slurm", "trainer=fsdp"], "fsdp")):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, "trainer.devices=4", "trainer.num_nodes=2"],
                          return_hydra_config=True)
        assert cfg.trainer.strategy == strategy and cfg.trainer.accelerator == "gpu"
        launcher = cfg.hydra.launcher
        assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)  # one task per GPU


@pytest.mark.parametrize("bf16, compute_dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_fsdp_mixed_precision_gathers_bf16_weights_and_keeps_fp32_master_shards(tmp_path, bf16, compute_dtype):
    """``shard_model(bf16=True)`` (trainer.precision=bf16-mixed): a QuantLinear sees its whole weight
    in BF16 in forward, while the sharded master weight and its gradient stay FP32."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from fp4train.distributed import shard_model
    from fp4train.linear import QuantLinear

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = build_model("hybrid_lm", "micro", pattern="M*-", d_model=64, mamba_head_dim=8, mamba_d_state=16)
        convert(model, RecipeConfig("nvfp4", bf16_first_blocks=0, bf16_last_blocks=1))
        shard_model(model, init_device_mesh("cpu", (1,)), bf16=bf16)
        layer = model.blocks[0].mixer.in_proj
        assert isinstance(layer, QuantLinear)
        seen = []
        layer.register_forward_pre_hook(lambda m, _args: seen.append((type(m.weight), m.weight.dtype, m.weight.shape)))
        model(torch.randint(0, 256, (2, 32))).float().sum().backward()
        assert seen == [(torch.nn.Parameter, compute_dtype, torch.Size([336, 64]))]
        assert isinstance(layer.weight, DTensor) and layer.weight.dtype == torch.float32
        assert layer.weight.grad.dtype == torch.float32
    finally:
        dist.destroy_process_group()


def test_ddp_reduces_what_a_graphed_backward_hands_over_and_nothing_during_capture(tmp_path):
    """The reasoning behind CUDA graphs under DDP (fp4train.cuda_graphs.check_graph_strategy), on the
    CPU: ``make_graphed_callables``' autograd structure without the CUDA graph — capture passes that
    take gradients with ``torch.autograd.grad`` inside DDP's forward, then one autograd node whose
    backward hands every parameter its gradient. DDP's reducer (seen through a comm hook) runs for
    the handed-over gradients only, once per step, and the reduced gradient is the eager one."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    class Graphed(torch.autograd.Function):  # what make_graphed_callables returns, minus the graph
        @staticmethod
        def forward(ctx, x, inner, *params):
            with torch.enable_grad():
                ctx.out, ctx.inputs = inner(x), (x, *params)
            return ctx.out.detach()

        @staticmethod
        def backward(ctx, grad):
            x_grad, *param_grads = torch.autograd.grad(ctx.out, ctx.inputs, grad)
            return x_grad, None, *param_grads

    class Outer(torch.nn.Module):  # Lightning's module around the model; DDP wraps this one
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))

        def forward(self, x, capture_passes=0):
            for _ in range(capture_passes):  # make_graphed_callables' warm-up and capture
                out = self.inner(x)
                torch.autograd.grad(out, tuple(self.inner.parameters()), torch.ones_like(out))
            return Graphed.apply(x, self.inner, *self.inner.parameters())

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        outer = Outer()
        reference = [p.detach().clone() for p in outer.inner.parameters()]
        ddp = DDP(outer)
        reduced = []

        def hook(state, bucket):
            reduced.append(bucket.buffer().clone())
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        ddp.register_comm_hook(None, hook)
        x = torch.randn(3, 8, requires_grad=True)
        ddp(x, capture_passes=4).sum().backward()
        assert len(reduced) == 1  # one bucket, reduced once: the capture passes reduced nothing
        eager = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        with torch.no_grad():
            for p, value in zip(eager.parameters(), reference):
                p.copy_(value)
        eager(x.detach()).sum().backward()
        for p, e in zip(outer.inner.parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, e.grad, rtol=0, atol=0)
        ddp(x).sum().backward()  # the next step: reduced again
        assert len(reduced) == 2
    finally:
        dist.destroy_process_group()
