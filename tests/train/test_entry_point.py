"""The real entry point with tiny overrides: what a run logs, the typed config, bad input."""

import json
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fp4train.data import build_datasets
from fp4train.errors import ConfigError
from fp4train.train import (
    CONF_DIR, DataConfig, LoggerConfig, ModelConfig, TrainConfig, TrainerConfig, _loggers, build_converted_model,
    to_train_config, train,
)
from fp4train.recipes import RecipeConfig

from .conftest import TINY_LM, TINY_VIT, read_metrics, run_main


def test_lm_run_logs_loss_lr_throughput_and_quant_stats_per_layer(tmp_path, capsys):
    run_main(*TINY_LM, "quant=nvfp4", "logger.quant_stats_every_n_steps=2", f"hydra.run.dir={tmp_path}")
    out = capsys.readouterr().out
    assert "Conversion to recipe 'nvfp4': 6 of 9 linear layers quantized" in out
    loss = read_metrics(tmp_path, "train/loss")
    assert sorted(loss) == [0, 1, 2] and loss[2] < loss[0]
    assert sorted(read_metrics(tmp_path, "val/loss")) == [1, 2]  # every 2 steps, and after the last
    assert all(v > 0 for v in read_metrics(tmp_path, "train/tokens_per_s").values())
    lr = read_metrics(tmp_path, "train/lr")
    assert lr[0] == pytest.approx(3e-3)  # warmup_steps=1: the peak LR at step 0, then cosine
    assert lr[1] == pytest.approx(lr[0]) and lr[2] < lr[1]  # cosine starts after warmup
    for stat in ("clipped", "flushed", "qsnr_db"):
        for operand in ("w", "x"):
            logged = read_metrics(tmp_path, f"quant/blocks.0.mixer.in_proj/{operand}_{stat}")
            assert sorted(logged) == [0, 2]  # only on the logging steps
    assert 0 < read_metrics(tmp_path, "quant/blocks.1.mixer.q_proj/w_qsnr_db")[0] < 40
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "blocks.2.mixer.up_proj" not in header  # BF16 layers have no quant stats
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["recipe"] == "nvfp4" and "quant=nvfp4" in info["overrides"]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_vit_run_logs_accuracy_on_digits(tmp_path):
    run_main(*TINY_VIT, "quant=mxfp4", f"hydra.run.dir={tmp_path}")
    acc = read_metrics(tmp_path, "val/acc")
    assert list(acc) == [1, 2] and all(0 <= a <= 1 for a in acc.values())
    assert read_metrics(tmp_path, "train/images_per_s")
    assert "mxfp4" in (tmp_path / "conversion.md").read_text()


def test_the_same_dataclasses_train_from_python(tmp_path):
    cfg = TrainConfig(
        model=ModelConfig("vit", overrides={"dim": 32, "depth": 1}),
        data=DataConfig("digits", batch_size=16),
        quant=RecipeConfig(name="fp8"),
        trainer=TrainerConfig(max_steps=2, val_every_n_steps=2, val_batches=1, enable_progress_bar=False),
        logger=LoggerConfig(wandb=False),
        out_dir=str(tmp_path),
    )
    result = train(cfg)
    assert result.status == "finished" and "val/loss" in result.metrics
    assert sorted(read_metrics(tmp_path, "train/loss")) == [0, 1]


def test_ablation_switches_are_quant_overrides(tmp_path, capsys):
    run_main(*TINY_LM, "quant=nvfp4", "quant.bf16_last_blocks=0", "trainer.max_steps=1", f"hydra.run.dir={tmp_path}")
    assert "9 of 9 linear layers quantized" not in capsys.readouterr().out  # lm_head stays BF16
    assert "8 of 9 linear layers quantized" in (tmp_path / "conversion.md").read_text()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("quant=nvfp5", ["Could not find 'quant/nvfp5'", "nvfp4", "mxfp4", "fp8_block"]),
        ("recipe=nope", ["Could not find 'recipe/nope'", "tetrajet_vit", "nvfp4_hybrid_lm"]),
        ("model=resnet", ["Could not find 'model/resnet'", "hybrid_lm", "vit"]),
        ("quant.rht=maybe", ["Value 'maybe' is not a valid bool", "quant.rht"]),
    ],
)
def test_bad_option_gives_hydras_error_with_the_valid_names(override, expected, capsys, tmp_path):
    with pytest.raises(SystemExit):
        run_main(override, f"hydra.run.dir={tmp_path}")
    err = capsys.readouterr().err
    for text in expected:
        assert text in err


def test_model_and_data_of_different_tasks_are_refused_with_the_valid_data(tmp_path):
    cfg = TrainConfig(model=ModelConfig("vit"), data=DataConfig("stdlib_text"), out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"model 'vit' needs vision data.*digits"):
        train(cfg)


def test_digits_and_stdlib_data_build_offline():
    train_set, val_set = build_datasets("digits")
    assert len(train_set) + len(val_set) == 1797


def test_a_run_ends_with_a_summary_and_train_log_holds_the_run(tmp_path, capsys):
    # logger=csv (in DEBUG); 2 steps with validation every 50: the short run is validated at its end
    run_main(*TINY_LM, "trainer.max_steps=2", "trainer.val_every_n_steps=50", f"hydra.run.dir={tmp_path}")
    out = capsys.readouterr().out
    train_loss, val_loss = read_metrics(tmp_path, "train/loss"), read_metrics(tmp_path, "val/loss")
    assert sorted(train_loss) == [0, 1] and list(val_loss) == [1]  # before: no validation at all
    summary = f"Run finished: 2 steps, 256 tokens; final train/loss {train_loss[1]:.4f}, val/loss {val_loss[1]:.4f}"
    assert summary in out and f"Output: {tmp_path}" in out
    log = (tmp_path / "train.log").read_text()  # before: an empty file
    assert "Conversion to recipe 'bf16': 0 of 9 linear layers quantized" in log
    assert "Training hybrid_lm micro on stdlib_text under recipe bf16 for 2 steps" in log
    assert summary in log and "`Trainer.fit` stopped: `max_steps=2` reached." in log  # Lightning's lines too


@pytest.mark.parametrize(
    "quant, expected",
    [
        (["quant=nvfp4"], dict(rht=True, rht_size=16, sr=True, sr_scope="grad", weight_2d=True, scale_rule=None,
                               bf16_first_blocks=1, bf16_last_blocks=1, double_quant=False)),
        (["quant=nvfp4", "quant.rht=false", "quant.sr=false"], dict(rht=False, rht_size=None, sr=False, sr_scope=None)),
        (["quant=mxfp4"], dict(rht=False, sr=False, weight_2d=False, scale_rule="floor", bf16_last_blocks=0)),
        # a method's recipe: its options in force under quant.methods.<method>
        (["quant=tetrajet_qramping", "quant.methods.tetrajet.ramping_k1=8"], dict(
            sr=True, sr_scope="backward", scale_rule="ceil", double_quant=True,
            methods={"tetrajet": dict(q_ema_decay=None, q_ema_warmup=10, q_ramping=True, ramping_k1=8.0, ramping_k2=5,
                                      ramping_n_max=16, ramping_calib_steps=30, ramping_every_n_steps=1000)})),
    ],
)
def test_wandb_config_holds_the_recipe_switches_in_force(quant, expected):
    # before: W&B got RecipeConfig as written, so quant.rht and quant.sr were None for every recipe
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = to_train_config(compose("train", overrides=[*quant, "out_dir=unused"]))
    _, report = build_converted_model(cfg)
    wandb_logger = _loggers(cfg, Path("unused"), [], report, 0)[1]
    logged = wandb_logger._wandb_init["config"]["quant"]
    got = {k: logged[k] for k in expected}
    if "methods" in expected:  # the recipe's method, in force; the other methods' nodes stay as given
        got["methods"] = {m: logged["methods"][m] for m in expected["methods"]}
    assert got == expected
    assert "anonymous" not in wandb_logger._wandb_init  # wandb warns about it even when None
    assert OmegaConf.create(logged)  # plain values only


def test_a_run_prints_none_of_the_known_library_noise(tmp_path, capfd):
    # before: Lightning's litlogger tip and device lines, W&B's "anonymous" warning and torch's
    # LeafSpec deprecation (from Lightning's own code) on every run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_main(*TINY_LM, "logger=wandb", "trainer.max_steps=1", f"hydra.run.dir={tmp_path}")
    out, err = capfd.readouterr()
    for noise in ("Tip:", "GPU available", "TPU available", "anonymous", "limit_val_batches", "LeafSpec"):
        assert noise not in out + err, noise
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    assert "Run finished: 1 steps" in out  # the run itself still speaks


def test_lightning_warning_about_an_unused_gpu_is_filtered():
    from lightning.pytorch.utilities.rank_zero import rank_zero_warn
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    from fp4train.logs import quiet_library_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_library_noise()
        # the call Lightning makes (trainer/setup.py) when CUDA is visible but accelerator=cpu
        rank_zero_warn("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.",
                       category=PossibleUserWarning)
        rank_zero_warn("some other warning")
    assert [str(w.message) for w in caught] == ["some other warning"]


def test_model_compile_blocks_compiles_the_blocks_after_conversion_with_quantized_layers_eager(tmp_path, monkeypatch):
    import fp4train.train as entry
    from fp4train.linear import QuantLinear

    calls, real = [], entry.compile_blocks

    def compile_eagerly(model, eager):  # Dynamo without Inductor: fast, and the same numerics
        calls.append((sum(isinstance(m, QuantLinear) for m in model.modules()), eager))
        return real(model, eager=eager, backend="eager")

    monkeypatch.setattr(entry, "compile_blocks", compile_eagerly)
    run_main(*TINY_VIT, "quant=mxfp4", "model.compile_blocks=true", "trainer.max_steps=2", f"hydra.run.dir={tmp_path}")
    assert calls == [(8, (QuantLinear,))]  # after convert: 2 blocks × 4 quantized linears
    assert sorted(read_metrics(tmp_path, "train/loss")) == [0, 1]
