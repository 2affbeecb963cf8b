"""The tetrajet_vit study trains the ViT on digits under every variant, logs oscillation and
Q-Ramping metrics, and its comparison report puts all the curves side by side."""

import csv

from tests.train.conftest import DEBUG, run_main

VARIANTS = ["bf16", "mxfp4", "tetrajet", "tetrajet_qema", "tetrajet_qramping"]


def test_tetrajet_study_runs_every_variant_and_compares_them(tmp_path, capsys):
    run_main(
        "recipe=tetrajet_vit", *DEBUG, "trainer.max_steps=4", "data.batch_size=32",
        "+model.overrides.depth=2", "callbacks.0.window=2", "quant.methods.tetrajet.ramping_every_n_steps=2",
        "quant.methods.tetrajet.ramping_calib_steps=2", "quant.methods.tetrajet.q_ema_warmup=1", f"hydra.sweep.dir={tmp_path}",
        "quant=" + ",".join(VARIANTS), multirun=True,
    )
    out = capsys.readouterr().out
    table = (tmp_path / "comparison.md").read_text()
    assert table in out and (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "recipe" not in line]
    assert rows == VARIANTS
    for i, name in enumerate(VARIANTS):
        with open(tmp_path / f"{i}_{name}" / "csv" / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        keys = {k for r in rows for k, v in r.items() if v}
        assert "train/loss" in keys and "val/acc" in keys
        if name != "bf16":  # every quantized run logs oscillation per layer and averaged
            assert {"osc/mean/oscillating_fraction", "osc/mean/flip_fraction", "osc/mean/confidence"} <= keys
            assert any(k.startswith("osc/blocks.0.") for k in keys)
        assert any(k.startswith("qramping/") for k in keys) == (name == "tetrajet_qramping")


def test_q_ramping_run_resumes_exactly_and_calibration_leaves_the_data_stream_alone(tmp_path):
    """Calibration at steps 0, 2, 4 (on a loader of its own); a resume from step 3 must give the
    uninterrupted run's losses: Q-Ramping periods and pending gradients are in the checkpoint,
    and the training batches are the same batches."""
    import torch

    from tests.train.conftest import TINY_VIT, read_metrics

    common = [*TINY_VIT, "quant=tetrajet_qramping", "trainer.max_steps=6", "data.num_workers=2",
              "quant.methods.tetrajet.ramping_every_n_steps=2", "quant.methods.tetrajet.ramping_calib_steps=2"]  # no recipe: attached by default
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_main(*common, "checkpoint.every_n_steps=3", f"hydra.run.dir={full}")
    ckpt = full / "checkpoints" / "step_3.ckpt"
    state = torch.load(ckpt, weights_only=False)
    ramp_state = next(v for k, v in state["callbacks"].items() if "QRampingCalibration" in k)
    assert ramp_state["period"] and max(p.max().item() for p in ramp_state["period"].values()) >= 1
    run_main(*common, f"checkpoint.resume={ckpt}", f"hydra.run.dir={resumed}")
    expected = {s: v for s, v in read_metrics(full, "train/loss").items() if s >= 3}
    assert read_metrics(resumed, "train/loss") == expected
