"""Bad input a user can fix ends the command with one plain message and status 2 (no traceback,
no HYDRA_FULL_ERROR hint), before any training step; Python callers get a ConfigError."""

import numpy as np
import pytest
from PIL import Image

from fp4train.errors import ConfigError
from fp4train.train import DataConfig, ModelConfig, TrainConfig, train

from .conftest import DEBUG, TINY_LM, TINY_VIT, run_main


def fails_plainly(capsys, *overrides: str) -> str:
    """Run the entry point, expect status 2 and return its one error message."""
    with pytest.raises(SystemExit) as info:
        run_main(*overrides)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "HYDRA_FULL_ERROR" not in err, err
    assert err.startswith("error: "), err
    return err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-step nvfp4 run of the tiny LM, with its last.ckpt."""
    out = tmp_path_factory.mktemp("finished")
    run_main(*TINY_LM, "quant=nvfp4", "trainer.max_steps=2", f"hydra.run.dir={out}")
    return out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data=token_file", "data.options.path=/no/such/dir"], "error: data 'token_file': token_file path '/no/such/dir' is not a directory"),
        (["trainer.max_steps=0"], "error: trainer.max_steps must be >= 1, got 0"),
        (["data.batch_size=0"], "error: data.batch_size must be >= 1, got 0"),
        (["data.batch_size=-8"], "error: data.batch_size must be >= 1, got -8"),
        (["data.batch_size=5", "trainer.accumulate_grad_batches=2"], "not divisible by trainer.accumulate_grad_batches 2"),
        (["quant=nvfp4", "quant.bf16_first_blocks=2", "quant.bf16_last_blocks=8"],
         "(3 blocks; bf16_first_blocks=2, bf16_last_blocks=8) — a run under this name would be BF16. The BF16 blocks "
         "cover all 3: set bf16_first_blocks=0, bf16_last_blocks=2 (command line: quant.bf16_first_blocks=0 "
         "quant.bf16_last_blocks=2)"),
        (["+model.overrides.no_such_field=1"], "error: model 'hybrid_lm' (size 'micro'): unknown HybridLMConfig fields ['no_such_field']"),
        (["checkpoint.resume=/no/such.ckpt"], "error: checkpoint.resume=/no/such.ckpt: no such file"),
        (["callbacks=[{_target_:no.such.Callback}]"], "error: callbacks: cannot resolve callback 'no.such.Callback'"),
        (["precision_schedule.switch_at=2"], "error: config: switch_at must be a fraction in (0, 1] or None, got 2.0"),
    ],
)
def test_bad_input_is_one_plain_message(tmp_path, capsys, overrides, message):
    err = fails_plainly(capsys, *TINY_LM, *overrides, f"hydra.run.dir={tmp_path}")
    assert message in err
    assert not (tmp_path / "checkpoints").exists()  # refused before training
    assert message.removeprefix("error: ") in (tmp_path / "train.log").read_text()


def test_a_corrupt_checkpoint_is_named(tmp_path, capsys):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    err = fails_plainly(capsys, *TINY_LM, f"checkpoint.resume={tmp_path / 'junk.ckpt'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert f"error: checkpoint.resume={tmp_path / 'junk.ckpt'} is not a readable checkpoint (" in err


def test_a_folder_that_is_not_a_sharded_checkpoint_is_named(tmp_path, capsys):
    folder = tmp_path / "step_2.ckpt"
    folder.mkdir()
    err = fails_plainly(capsys, *TINY_LM, f"checkpoint.resume={folder}", f"hydra.run.dir={tmp_path / 'run'}")
    assert f"error: checkpoint.resume={folder} is not a readable checkpoint (ValueError: a folder, but not a sharded" in err


@pytest.mark.parametrize("recipe", ["bf16", "fp8"])
def test_a_checkpoint_of_another_recipe_is_refused(finished_run, tmp_path, capsys, recipe):
    # before: bf16 died in load_state_dict with a traceback; fp8 (same layer types) resumed silently
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    err = fails_plainly(capsys, *TINY_LM, f"quant={recipe}", "trainer.max_steps=4", f"checkpoint.resume={ckpt}",
                        f"hydra.run.dir={tmp_path}")
    assert f"error: checkpoint.resume={ckpt} was written by a run with recipe 'nvfp4'; this run has '{recipe}'" in err


def test_a_checkpoint_of_another_model_is_refused(finished_run, tmp_path, capsys):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    err = fails_plainly(capsys, *TINY_LM, "quant=nvfp4", "model.overrides.d_model=128", "trainer.max_steps=4",
                        f"checkpoint.resume={ckpt}", f"hydra.run.dir={tmp_path}")
    assert "does not fit this run's model and recipe (hybrid_lm micro, nvfp4)" in err and "other shapes" in err


def test_resuming_a_finished_run_says_there_is_nothing_to_train(finished_run, tmp_path, capsys):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    err = fails_plainly(capsys, *TINY_LM, "quant=nvfp4", "trainer.max_steps=2", f"checkpoint.resume={ckpt}",
                        f"hydra.run.dir={tmp_path}")
    assert (f"error: checkpoint.resume={ckpt} is at step 2, and this run stops at trainer.max_steps=2: nothing left to "
            "train (the run finished). To train on, raise trainer.max_steps above 2") in err


def test_a_missing_npz_is_named(tmp_path, capsys):
    err = fails_plainly(capsys, *TINY_VIT, "data=npz", "data.options.path=/no/such.npz", f"hydra.run.dir={tmp_path}")
    assert "error: data 'npz': npz file '/no/such.npz' does not exist" in err


def test_an_unreadable_npz_is_named(tmp_path, capsys):
    (tmp_path / "data.npz").write_bytes(b"PK\x03\x04 truncated")
    err = fails_plainly(capsys, *TINY_VIT, "data=npz", f"data.options.path={tmp_path / 'data.npz'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert f"error: data 'npz': {tmp_path / 'data.npz'} is not a readable .npz (BadZipFile" in err


def test_image_geometry_is_checked_before_training_and_the_named_overrides_work(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name in ("ant", "bee", "cat"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "images" / name / f"{i}.png")
    data = ["data=image_folder", f"data.options.root={tmp_path / 'images'}", "data.options.image_size=16", "data.batch_size=8"]
    err = fails_plainly(capsys, *TINY_VIT, *data, f"hydra.run.dir={tmp_path / 'refused'}")
    fix = "++model.overrides.image_size=16 ++model.overrides.in_channels=3 ++model.overrides.num_classes=3"
    assert ("error: data 'image_folder' gives 3×16×16 images of 3 classes, but model 'vit' (size 'micro') takes 1×8×8 "
            f"images of 10 classes. Set the model's geometry: {fix}") in err
    run_main(*TINY_VIT, *data, *fix.split(), "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'fixed'}")
    assert (tmp_path / "fixed" / "checkpoints" / "last.ckpt").is_file()


def test_the_full_traceback_is_there_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="trainer.max_steps must be >= 1"):
        run_main(*DEBUG, "trainer.max_steps=0", f"hydra.run.dir={tmp_path}")


def test_python_callers_get_the_exception(tmp_path):
    cfg = TrainConfig(model=ModelConfig("vit"), data=DataConfig("npz", options={"path": "/no/such.npz"}), out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="npz file '/no/such.npz' does not exist"):
        train(cfg)
