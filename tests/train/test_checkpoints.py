"""Checkpoints: resume continues exactly (into the run's own directory too), SIGTERM saves one,
a non-finite loss stops the run, a checkpoint never holds a non-finite tensor."""

import csv
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest
import torch

from .conftest import REPO, TINY_LM, read_metrics, run_main


def test_resume_from_a_checkpoint_continues_like_the_uninterrupted_run(tmp_path):
    # NVFP4 rounds gradients stochastically: equal losses need the SR step counters restored
    # too (QuantLinear extra state), as well as optimizer, LR schedule and data order.
    common = [*TINY_LM, "quant=nvfp4", "trainer.max_steps=6", "trainer.val_every_n_steps=3"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_main(*common, "checkpoint.every_n_steps=3", f"hydra.run.dir={full}")
    ckpt = full / "checkpoints" / "step_3.ckpt"
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 3
    assert state["state_dict"]["model.blocks.0.mixer.in_proj._extra_state"] == {"sr_step": 3}
    run_main(*common, f"checkpoint.resume={ckpt}", f"hydra.run.dir={resumed}")
    expected = {s: v for s, v in read_metrics(full, "train/loss").items() if s >= 3}
    assert read_metrics(resumed, "train/loss") == expected
    assert read_metrics(resumed, "val/loss") == {5: read_metrics(full, "val/loss")[5]}
    assert read_metrics(resumed, "train/lr") == {s: v for s, v in read_metrics(full, "train/lr").items() if s >= 3}


def test_resume_into_the_runs_own_directory_continues_its_log_and_last_checkpoint(tmp_path):
    # a run interrupted after its step-3 checkpoint (here: one that went on to step 6), resumed
    # into the same directory: the CSV keeps steps 0-2 and gets 3-5 again, once each
    common = [*TINY_LM, "quant=nvfp4", "trainer.max_steps=6", "trainer.val_every_n_steps=3", f"hydra.run.dir={tmp_path}"]
    run_main(*common, "checkpoint.every_n_steps=3")
    before = {key: read_metrics(tmp_path, key) for key in ("train/loss", "val/loss", "train/lr")}
    ckpt = tmp_path / "checkpoints" / "step_3.ckpt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_main(*common, f"checkpoint.resume={ckpt}")
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]  # expected when resuming there
    with open(tmp_path / "csv" / "metrics.csv") as f:
        train_rows = [int(r["step"]) for r in csv.DictReader(f) if r["train/loss"]]
    assert train_rows == [0, 1, 2, 3, 4, 5]  # before: [3, 4, 5] (the file was overwritten)
    assert {key: read_metrics(tmp_path, key) for key in before} == before
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "step_3.ckpt", "step_6.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6


@pytest.mark.parametrize("what", ["weight", "optimizer"])
def test_a_checkpoint_is_never_written_with_non_finite_state(tmp_path, capsys, what):
    # after step 2 a weight (or its AdamW second moment) turns infinite, as an overflowing update would
    poison = f"callbacks=[{{_target_:tests.train.conftest.PoisonAfterStep,step:2,what:{what}}}]"
    with pytest.raises(SystemExit) as exit_info:
        run_main(*TINY_LM, "trainer.max_steps=5", "checkpoint.every_n_steps=1", poison, f"hydra.run.dir={tmp_path}")
    assert exit_info.value.code == 1
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step_1.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 1
    message = (tmp_path / "DIVERGED").read_text()
    assert f"is not finite after step 2: checkpoint {checkpoints / 'step_2.ckpt'} not written" in message
    assert f"Last finite checkpoint: {checkpoints / 'step_1.ckpt'}" in message
    assert message.strip() in capsys.readouterr().err
    for path in checkpoints.iterdir():
        state = torch.load(path, weights_only=False)
        tensors = list(state["state_dict"].values())
        tensors += [t for s in state["optimizer_states"][0]["state"].values() for t in s.values()]
        assert all(torch.isfinite(t).all() for t in tensors if torch.is_tensor(t) and t.is_floating_point())


def test_non_finite_loss_stops_the_run_naming_the_step_and_last_checkpoint(tmp_path, capsys):
    # lr 1e20: the first update blows the weights up, the next loss is NaN
    with pytest.raises(SystemExit) as exit_info:
        run_main(*TINY_LM, "optim.lr=1e20", "optim.warmup_steps=0", "trainer.max_steps=50",
                 "checkpoint.every_n_steps=1", f"hydra.run.dir={tmp_path}")
    assert exit_info.value.code == 1
    message = (tmp_path / "DIVERGED").read_text()
    assert "non-finite training loss" in message and "at step 1" in message
    assert f"Last finite checkpoint: {tmp_path / 'checkpoints' / 'step_1.ckpt'}" in message
    assert message.strip() in capsys.readouterr().err
    loss = read_metrics(tmp_path, "train/loss")
    assert sorted(loss) == [0, 1] and loss[0] == loss[0] and loss[1] != loss[1]  # NaN logged, then stopped


def test_sigterm_saves_a_checkpoint_before_exit(tmp_path):
    cmd = [sys.executable, "-m", "fp4train.train", *TINY_LM, "trainer.max_steps=100000",
           "trainer.val_every_n_steps=100000", "trainer.enable_progress_bar=true", f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trained, out, err = threading.Event(), [], []

    def read(stream, sink, watch):
        while chunk := stream.read(64):
            sink.append(chunk)
            if watch and "train/loss=" in "".join(sink[-3:]):  # the progress bar shows a finished step
                trained.set()

    threading.Thread(target=read, args=(proc.stdout, out, True), daemon=True).start()
    threading.Thread(target=read, args=(proc.stderr, err, False), daemon=True).start()
    if not trained.wait(120):
        proc.kill()
        pytest.fail("no training step within 120 s:\n" + "".join(err)[-2000:])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    time.sleep(0.2)
    text = "".join(err)
    saved = sorted((tmp_path / "checkpoints").glob("step_*.ckpt"))
    assert len(saved) == 1, text[-2000:]  # the one written on SIGTERM (no periodic checkpoints)
    step = torch.load(saved[0], weights_only=False)["global_step"]
    assert step >= 1
    assert f"SIGTERM: stopped at step {step}; resume with checkpoint.resume={saved[0]}" in text
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step
