"""AdamW parameter groups, LR schedules and optimizer wrappers (fp4train.optim)."""

import math

import pytest
import torch
from torch import nn

from fp4train.models import build_model
from fp4train.optim import OptimConfig, build_optimizer, fused_by_default, lr_factor, param_groups


def _groups(model):
    return {g["weight_decay"]: set(g["names"]) for g in param_groups(model, 0.1)}


def test_weight_decay_skips_norms_biases_embeddings_and_marked_params():
    groups = _groups(build_model("hybrid_lm", "micro"))
    decayed, kept = groups[0.1], groups[0.0]
    assert "embedding.weight" in kept and "lm_head.weight" in decayed
    assert {"blocks.0.mixer.A_log", "blocks.0.mixer.D", "blocks.0.mixer.dt_bias"} <= kept
    assert "blocks.0.norm.weight" in kept and "blocks.0.mixer.in_proj.weight" in decayed
    assert all(n.endswith("weight") for n in decayed)
    vit = _groups(build_model("vit", "micro"))
    assert {"cls_token", "pos_embed", "blocks.0.attn.qkv.bias", "blocks.0.norm1.weight"} <= vit[0.0]
    assert {"blocks.0.attn.qkv.weight", "patch_embed.weight", "head.weight"} <= vit[0.1]


def test_every_trainable_parameter_is_in_exactly_one_group():
    model = build_model("vit", "micro")
    names = [n for g in param_groups(model, 0.1) for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())


def test_cosine_warms_up_linearly_then_decays_to_min_ratio():
    cfg = OptimConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    f = [lr_factor(s, 110, cfg) for s in range(110)]
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert f[109] == pytest.approx(0.1)  # the last step that runs is at the minimum
    assert all(a > b for a, b in zip(f[10:], f[11:]))


def test_wsd_is_flat_until_the_decay_fraction_then_linear_to_min_ratio():
    cfg = OptimConfig(schedule="wsd", warmup_steps=5, decay_fraction=0.2, min_lr_ratio=0.0)
    f = [lr_factor(s, 100, cfg) for s in range(100)]
    assert f[4] == pytest.approx(1.0) and f[0] == pytest.approx(0.2)
    assert f[5:80] == pytest.approx([1.0] * 75)
    assert f[80] == pytest.approx(0.95)  # the decay phase starts decaying at once
    assert f[90] == pytest.approx(0.45) and f[99] == pytest.approx(0.0)  # minimum at the last step


def test_unknown_schedule_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown LR schedule 'linear'.*cosine.*wsd"):
        OptimConfig(schedule="linear")


seen = []


def record_wrapper(model, optimizer, tag):
    seen.append((type(optimizer).__name__, tag))


class Wrapped(torch.optim.Optimizer):
    def __init__(self, model, optimizer):
        self.inner = optimizer
        super().__init__(model.parameters(), {})


def test_optimizer_wrappers_from_config_are_applied_in_order():
    model = nn.Linear(4, 4)
    cfg = OptimConfig(wrappers=[
        {"_target_": f"{__name__}.record_wrapper", "tag": "first"},
        {"_target_": f"{__name__}.Wrapped"},
    ])
    opt = build_optimizer(model, cfg)
    assert seen == [("AdamW", "first")]
    assert isinstance(opt, Wrapped) and isinstance(opt.inner, torch.optim.AdamW)
    with pytest.raises(ValueError, match="cannot resolve optimizer wrapper 'no.such.thing'"):
        build_optimizer(model, OptimConfig(wrappers=[{"_target_": "no.such.thing"}]))


def test_fused_by_default_only_where_every_parameter_is_a_cuda_float_tensor():
    cuda_float = type("T", (), {"device": torch.device("cuda"), "is_floating_point": lambda self: True})()
    cuda_int = type("T", (), {"device": torch.device("cuda"), "is_floating_point": lambda self: False})()
    assert fused_by_default([cuda_float, cuda_float])
    assert not fused_by_default([cuda_float, cuda_int]) and not fused_by_default([])
    cpu_model = build_model("vit", "micro")
    assert not fused_by_default(list(cpu_model.parameters()))
    assert not build_optimizer(cpu_model, OptimConfig()).defaults["fused"]
    assert build_optimizer(cpu_model, OptimConfig(fused=True)).defaults["fused"]  # PyTorch fuses on CPU too


grad_norms: list[float] = []


def record_grad_norm(model, optimizer):
    """The gradient norm that ``step`` used (Lightning runs forward, backward and clipping in the
    closure it passes to ``step``; the gradients are still there after it)."""
    def post(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        grad_norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
    optimizer.register_step_post_hook(post)


def test_a_fused_adamw_is_clipped_under_bf16_mixed_and_trains_like_the_foreach_step(tmp_path):
    # Lightning refuses to clip a fused optimizer under any mixed precision (its fp16 check);
    # TrainModule.clip_gradients clips it where no gradient scaler runs.
    from fp4train.train import DataConfig, LoggerConfig, ModelConfig, TrainConfig, TrainerConfig, train

    from .conftest import read_metrics

    losses, norms = {}, {}
    for fused in (False, True):
        grad_norms.clear()
        cfg = TrainConfig(
            model=ModelConfig("vit", overrides={"dim": 32, "depth": 1}),
            data=DataConfig("digits", batch_size=16),
            optim=OptimConfig(fused=fused, wrappers=[{"_target_": f"{__name__}.record_grad_norm"}]),
            trainer=TrainerConfig(max_steps=3, precision="bf16-mixed", gradient_clip_val=1e-3, val_every_n_steps=3,
                                  val_batches=1, enable_progress_bar=False),
            logger=LoggerConfig(wandb=False), out_dir=str(tmp_path / f"fused_{fused}"),
        )
        assert train(cfg).status == "finished"
        losses[fused], norms[fused] = read_metrics(tmp_path / f"fused_{fused}", "train/loss"), list(grad_norms)
    assert len(norms[True]) == 3 and max(norms[True]) <= 1e-3 * (1 + 1e-5)
    assert norms[True] == pytest.approx(norms[False], rel=1e-4)
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
