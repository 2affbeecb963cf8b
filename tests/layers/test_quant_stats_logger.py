"""QuantStatsLogger: statistics of the tensors a QuantLinear actually quantizes — the input after
autocast's cast, the output gradient as backward receives it — on logging steps only."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from fp4train.callbacks import QuantStatsLogger
from fp4train.linear import QuantLinear
from fp4train.quant_stats import quant_stats
from fp4train.recipes import build_recipe


class _Logger:
    def __init__(self) -> None:
        self.logged: list[tuple[dict, int]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append((metrics, step))


def _step(callback, model, trainer, x, g):
    callback.on_train_batch_start(trainer, model, None, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    (y.float() * g).sum().backward()  # the layer's backward receives dy = g in bf16
    callback.on_train_batch_end(trainer, model, None, None, 0)


def test_stats_of_input_after_autocast_and_of_the_gradient_with_its_flushed_blocks():
    """Issue 21, item 15: ``x`` is measured in bf16 (what the layer quantizes under autocast), ``dy``
    and its Wgrad copy are measured too; a gradient whose rows are 1e-7 of its amax loses those
    rows' NVFP4 blocks to the per-tensor scale, and ``dy_block_flushed`` says so."""
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(64, 32), build_recipe("nvfp4"))
    model = nn.Sequential(layer)
    x = torch.randn(64, 64) * torch.randn(64, 64).exp()
    g = torch.randn(64, 32)
    g[:16] *= 1e-7  # 16 of 64 token rows: 32 of 128 Dgrad blocks below 2.2e-6 of the amax
    logger = _Logger()
    trainer = SimpleNamespace(global_step=0, loggers=[logger])
    callback = QuantStatsLogger(every_n_steps=2)
    _step(callback, model, trainer, x, g)
    (metrics, step), = logger.logged
    assert step == 0
    for operand, spec, t in (("x", "x_fprop", x.bfloat16()), ("dy", "dy_dgrad", g.bfloat16()),
                             ("x_wgrad", "x_wgrad", x.bfloat16().T), ("dy_wgrad", "dy_wgrad", g.bfloat16().T),
                             ("w", "w_fprop", layer.weight.detach())):
        expected = quant_stats(t, layer.operand_spec(spec))
        assert {k: metrics[f"quant/0/{operand}_{k}"] for k in expected} == expected, operand
    assert metrics["quant/0/x_qsnr_db"] != quant_stats(x, layer.recipe.x_fprop)["qsnr_db"]  # not the fp32 input
    assert metrics["quant/0/dy_block_flushed"] == pytest.approx(32 / 128)
    # Wgrad's blocks run along tokens: 16 small tokens fill one block per row, and the 16-point
    # RHT mixes within that block only, so it flushes too (32 rows × 4 blocks: 32 of 128)
    assert metrics["quant/0/dy_wgrad_block_flushed"] == pytest.approx(32 / 128)

    trainer.global_step = 1  # not a logging step: no hooks, nothing logged
    _step(callback, model, trainer, x, g)
    assert len(logger.logged) == 1 and not layer._forward_hooks
