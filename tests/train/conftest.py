"""Helpers that run the real entry point (``fp4train.train.main`` under Hydra) with tiny overrides."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

# 3 steps, validation after step 2 on one batch, CSV logging; fields (not `trainer=debug`) so
# that they also win over a study recipe's values
DEBUG = [
    "trainer.max_steps=3", "trainer.val_every_n_steps=2", "trainer.val_batches=1",
    "trainer.enable_progress_bar=false", "logger=csv", "optim.warmup_steps=1", "checkpoint.every_n_steps=0",
]
# A 3-layer hybrid LM (Mamba-2, attention, MLP; d 64, 16 Mamba heads so in_proj is 400 wide:
# a multiple of NVFP4's 16) on 4 windows of 32 bytes per step; BF16 only in the last block.
TINY_LM = [
    "model=hybrid_lm", "+model.overrides.pattern=M*-", "+model.overrides.d_model=64",
    "+model.overrides.mamba_head_dim=8", "+model.overrides.mamba_d_state=16",
    "data=stdlib_text", "data.batch_size=4", "data.options.seq_len=32", "data.options.val_samples=4",
    "quant.bf16_first_blocks=0", "quant.bf16_last_blocks=1",
    *DEBUG,
]
TINY_VIT = [
    "model=vit", "+model.overrides.dim=32", "+model.overrides.depth=2", "data=digits", "data.batch_size=32",
    *DEBUG,
]
REPO = Path(__file__).resolve().parents[2]


def run_main(*overrides: str, multirun: bool = False) -> None:
    """``python -m fp4train.train [-m] OVERRIDES`` in this process."""
    from fp4train.train import main

    argv = ["fp4train", *(["-m"] if multirun else []), *overrides]
    old = sys.argv
    sys.argv = argv
    try:
        main()
    finally:
        sys.argv = old


def run_cli(*overrides: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """The entry point as a subprocess on one intra-op thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, "-m", "fp4train.train", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def read_metrics(run_dir: Path, key: str) -> dict[int, float]:
    """{step: value} of ``key`` in a run's csv/metrics.csv."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    """W&B never reaches the network and keeps its own files under the test's tmp dir."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))


class PoisonAfterStep(L.Callback):
    """A callback for tests: after optimizer step ``step`` it writes an infinity into the first
    weight (``what="weight"``) or into that weight's AdamW ``exp_avg_sq`` (``what="optimizer"``),
    as an overflowing update would."""

    def __init__(self, step: int, what: str = "weight") -> None:
        self.step, self.what = step, what

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        param = next(pl_module.parameters())
        target = param if self.what == "weight" else trainer.optimizers[0].state[param]["exp_avg_sq"]
        with torch.no_grad():
            target.view(-1)[0] = float("inf")
