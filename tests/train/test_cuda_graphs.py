"""CUDA-graph training (``fp4train.cuda_graphs``, ``trainer.cuda_graph``): what a CPU can check —
what a capture depends on (``graph_key``), and bad input refused by name. The capture itself needs a
GPU: ``python -m experiments.bench.run`` checks graphed against eager training steps, bit for bit."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from fp4train.cuda_graphs import TrainingGraph, capture_training_graph, graph_key
from fp4train.linear import QuantLinear
from fp4train.lit import LanguageModelModule
from fp4train.methods.tetrajet import QEMALinear
from fp4train.optim import OptimConfig
from fp4train.precision_schedule import PrecisionSchedule
from fp4train.recipes import RecipeConfig, build_recipe
from fp4train.train import DataConfig, LoggerConfig, ModelConfig, TrainConfig, TrainerConfig, train


def test_graph_key_follows_the_precision_schedule():
    model = nn.Sequential(QuantLinear(64, 64, recipe="nvfp4"), nn.ReLU(), QuantLinear(64, 32, recipe="nvfp4"))
    schedule = PrecisionSchedule(switch_at=0.5, scope="forward")
    schedule.apply(model, 0, 10)
    before = graph_key(model)
    schedule.apply(model, 4, 10)
    assert graph_key(model) == before
    schedule.apply(model, 5, 10)  # the switch: Fprop unquantized from here on
    assert graph_key(model) != before and len(graph_key(model)) == 2


def test_graph_key_follows_q_emas_warm_up():
    recipe = build_recipe(RecipeConfig(name="tetrajet_qema", methods={"tetrajet": {"q_ema_decay": 0.9, "q_ema_warmup": 2}}))
    layer = QEMALinear.from_linear(nn.Linear(64, 32), recipe)
    keys = [graph_key(layer)]
    for _ in range(3):
        layer.update_ema()
        keys.append(graph_key(layer))
    assert keys[0] == keys[1] != keys[2] == keys[3]  # Q-EMA rounds from the 2nd update on


def test_graph_key_ignores_the_sr_counter():
    """The SR step counter is a device tensor the kernels read: advancing it must not recapture."""
    layer = QuantLinear(64, 32, recipe="nvfp4")
    key = graph_key(layer)
    layer(torch.randn(16, 64)).sum().backward()
    assert int(layer.sr_step) == 1 and graph_key(layer) == key


def test_capture_refuses_cpu_inputs_and_eval_mode_by_name():
    model = nn.Linear(8, 8)
    with pytest.raises(ValueError, match="CUDA inputs only.*Tensor on cpu"):
        capture_training_graph(model, (torch.randn(2, 8),))
    model.eval()
    with pytest.raises(ValueError, match=r"model.train\(\)"):
        capture_training_graph(model, (torch.randn(2, 8),))


def test_cuda_graph_without_a_gpu_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = TrainConfig(model=ModelConfig("hybrid_lm", "micro"), data=DataConfig("stdlib_text"),
                      trainer=TrainerConfig(cuda_graph=True), out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="trainer.cuda_graph=true needs a CUDA GPU"):
        train(copy.deepcopy(cfg))


class _StaticGradient(torch.autograd.Function):
    """What ``make_graphed_callables``' backward does: the parameter's gradient is a static
    buffer, detached, which the next backward (replay) overwrites."""

    buffer: torch.Tensor

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * p

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        _StaticGradient.buffer.copy_((g * x).sum(0))  # the replay writes the static buffer
        return None, _StaticGradient.buffer.detach()


@pytest.mark.parametrize("hooks", [True, False])
def test_gradients_accumulate_over_micro_batches_despite_static_buffers(hooks):
    """Without ``TrainingGraph``'s copies autograd keeps the static buffer as ``p.grad``, and the
    second micro-batch overwrites the first's gradient and adds itself again (2·g2, not g1 + g2)."""
    p = nn.Parameter(torch.ones(4))
    _StaticGradient.buffer = torch.zeros(4)
    graph = TrainingGraph(lambda x: _StaticGradient.apply(x, p), nn.Module(), [p] if hooks else [])
    x1, x2 = torch.full((2, 4), 1.0), torch.full((2, 4), 10.0)
    graph(x1).sum().backward()
    graph(x2).sum().backward()
    assert torch.equal(p.grad, torch.full((4,), 2.0 + 20.0)) == hooks
    graph.release()
    assert not graph._hooks


def test_a_training_graph_refuses_eval_and_no_grad_calls():
    """A replay is a training step (it advances the SR counters): eval and no-grad calls must use
    the model itself."""
    model = nn.Linear(4, 4)
    graph = TrainingGraph(model, model, [])
    graph(torch.randn(2, 4))
    for ctx in (torch.no_grad(), torch.enable_grad()):
        model.train(isinstance(ctx, torch.no_grad))  # training without gradients, then eval with them
        with ctx, pytest.raises(RuntimeError, match="eval mode or without gradients"):
            graph(torch.randn(2, 4))


def test_steps_with_hooked_modules_run_eagerly(caplog):
    """A replay runs no Python: with a hook on a layer (the quant-stats logger's input capture)
    the step runs the model eagerly, so the hook sees the step's input; without one the module
    goes on to capture (which a CPU input is refused)."""
    model = nn.Sequential(QuantLinear(64, 32, recipe="nvfp4"))
    module = LanguageModelModule(model, OptimConfig(), cuda_graph=True)
    module._trainer = SimpleNamespace(world_size=1, global_step=0)
    module.train()
    x = torch.randn(16, 64)
    seen = []
    handle = model[0].register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with caplog.at_level("INFO", logger="fp4train.lit"):
        module(x)
        module(x)
    assert len(seen) == 2 and seen[0] is x
    assert caplog.text.count("run eagerly") == 1  # said once, not every logging step
    handle.remove()
    with pytest.raises(ValueError, match="CUDA inputs only"):
        module(x)


def test_the_module_captures_once_per_shape_and_graph_key_and_releases_old_graphs(monkeypatch):
    """``TrainModule.forward`` with ``cuda_graph``: one capture per (input shape, ``graph_key``),
    the previous graph released before the next capture and at the end of training. The capture
    itself is replaced by a stand-in here (it needs a GPU)."""
    events = []

    class FakeGraph:
        def __init__(self, model, sample):
            self.model, self.shape = model, tuple(sample[0].shape)
            events.append(("capture", self.shape))

        def __call__(self, x):
            return self.model(x)

        def release(self):
            events.append(("release", self.shape))

    monkeypatch.setattr("fp4train.lit.capture_training_graph", FakeGraph)
    model = nn.Sequential(QuantLinear(64, 32, recipe="nvfp4"))
    module = LanguageModelModule(model, OptimConfig(), cuda_graph=True)
    module._trainer = SimpleNamespace(world_size=1, global_step=0)
    module.train()
    module(torch.randn(16, 64))
    module(torch.randn(16, 64))
    assert events == [("capture", (16, 64))]
    model[0].high_precision = frozenset({"fprop"})  # a precision schedule's switch
    module(torch.randn(16, 64))
    module(torch.randn(32, 64))  # another shape
    module.on_train_end()
    assert events == [("capture", (16, 64)), ("release", (16, 64)), ("capture", (16, 64)),
                      ("release", (16, 64)), ("capture", (32, 64)), ("release", (32, 64))]
    module.eval()
    module(torch.randn(8, 64))  # eval runs the model itself: no capture
    assert len(events) == 6
