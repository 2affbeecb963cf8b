"""model=hf: transformers causal LMs built from a config or a local folder, converted by the
recipes' block rules and trained through the entry point like our own LMs."""

import json
import sys

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers", reason='model=hf needs the optional transformers package: pip install -e ".[hf]"')

from fp4train.convert import convert  # noqa: E402
from fp4train.data import build_datasets  # noqa: E402
from fp4train.lit import StepSampler  # noqa: E402
from fp4train.linear import QuantLinear  # noqa: E402
from fp4train.models import HFModelConfig, build_hf_model  # noqa: E402
from fp4train.optim import OptimConfig, build_optimizer, build_scheduler  # noqa: E402
from fp4train.recipes import RecipeConfig  # noqa: E402
from fp4train.recipes import RecipeConfig  # noqa: E402
from fp4train.train import DataConfig, LoggerConfig, ModelConfig, TrainConfig, TrainerConfig, train  # noqa: E402
from tests.train.conftest import read_metrics, run_main  # noqa: E402

# 4 Llama layers, d 64, GQA 4/2 heads: every linear fits NVFP4's 16×16 tiles
LLAMA = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2}
# Nemotron-H layers M - M * - (Mamba-2, MLP, attention); in_proj 64 → 128 + 192 + 16 = 336
NEMOTRON_H = {"hybrid_override_pattern": "M-M*-", "hidden_size": 64, "intermediate_size": 128,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "mamba_num_heads": 16,
              "mamba_head_dim": 8, "n_groups": 2, "ssm_state_size": 16, "chunk_size": 16}
ARCHS = {"llama": LLAMA, "nemotron_h": NEMOTRON_H}
LLAMA_LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
MIXER_LINEARS = {"M": ["in_proj", "out_proj"], "-": ["up_proj", "down_proj"], "*": ["q_proj", "k_proj", "v_proj", "o_proj"]}
# blocks 1 .. n-2 quantized: the first and the last block stay BF16
NVFP4_INNER = RecipeConfig(name="nvfp4", bf16_first_blocks=1, bf16_last_blocks=1)
TINY_DATA = ["data=stdlib_text", "data.batch_size=4", "data.options.seq_len=32", "data.options.val_samples=4"]
DEBUG = ["trainer=debug", "logger=csv", "trainer.enable_progress_bar=false", "optim.warmup_steps=1"]


def hf_overrides(model_type: str | None = None, path=None, **config) -> list[str]:
    head = [f"model.hf.model_type={model_type}"] if model_type else [f"model.hf.path={path}"]
    return ["model=hf", *head, *(f"+model.hf.config.{k}={v}" for k, v in config.items())]


def expected_quantized(model_type: str) -> list[str]:
    if model_type == "llama":
        return [f"model.model.layers.{i}.{name}" for i in (1, 2) for name in LLAMA_LINEARS]
    pattern = NEMOTRON_H["hybrid_override_pattern"]
    return [f"model.model.layers.{i}.mixer.{name}" for i in range(1, len(pattern) - 1) for name in MIXER_LINEARS[pattern[i]]]


@pytest.mark.parametrize("model_type, n_linears", [("llama", 4 * 7 + 1), ("nemotron_h", 2 + 2 + 2 + 4 + 2 + 1)])
def test_nvfp4_quantizes_the_linears_of_the_blocks_between_the_bf16_ones(model_type, n_linears):
    model = build_hf_model(HFModelConfig(model_type=model_type, config=ARCHS[model_type]))
    report = convert(model, NVFP4_INNER)
    assert report.quantized == expected_quantized(model_type)
    assert len(report.rows) == n_linears
    assert [r[3:] for r in report.rows if r[0] == "model.lm_head"] == [("bf16", "outside the blocks (embedding/head)")]
    assert all(isinstance(model.get_submodule(n), QuantLinear) for n in report.quantized)
    model(torch.randint(0, 256, (2, 32))).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_the_papers_bf16_blocks_scale_to_a_tiny_model_and_explicit_counts_that_cover_it_are_refused():
    model = build_hf_model(HFModelConfig(model_type="llama", config=LLAMA))
    assert len(convert(model, "nvfp4").quantized) == 14  # 2 and 8 of 62 scaled to 4 blocks: 1 and 1
    model = build_hf_model(HFModelConfig(model_type="llama", config=LLAMA))
    explicit = RecipeConfig(name="nvfp4", bf16_first_blocks=2, bf16_last_blocks=8)
    with pytest.raises(ValueError, match="quantized none of the model's 29 linear layers"):
        convert(model, explicit)  # first 2 + last 8 blocks in BF16: all 4


@pytest.mark.parametrize("model_type, summary", [("llama", "14 of 29"), ("nemotron_h", "8 of 13")])
def test_the_entry_point_trains_an_hf_model_under_nvfp4(model_type, summary, tmp_path, capsys):
    run_main(*hf_overrides(model_type, **ARCHS[model_type]), *TINY_DATA, *DEBUG, "quant=nvfp4",
             "quant.bf16_first_blocks=1", "quant.bf16_last_blocks=1", "logger.quant_stats_every_n_steps=2",
             f"hydra.run.dir={tmp_path}")
    assert f"Conversion to recipe 'nvfp4': {summary} linear layers quantized" in capsys.readouterr().out
    loss = read_metrics(tmp_path, "train/loss")
    assert sorted(loss) == [0, 1, 2] and all(np.isfinite(list(loss.values())))
    assert abs(loss[0] - np.log(256)) < 0.5  # a fresh byte-level LM starts near uniform
    assert sorted(read_metrics(tmp_path, "val/loss")) == [1, 2]  # every 2 steps, and at the end
    quantized, first_bf16 = expected_quantized(model_type)[0], f"model.model.layers.0"
    assert sorted(read_metrics(tmp_path, f"quant/{quantized}/x_qsnr_db")) == [0, 2]
    assert first_bf16 not in (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert json.loads((tmp_path / "run_info.json").read_text())["model"] == "hf"


def test_bf16_recipe_losses_equal_the_unconverted_model_trained_by_hand(tmp_path):
    optim = OptimConfig(warmup_steps=1)
    cfg = TrainConfig(
        model=ModelConfig("hf", hf=HFModelConfig(model_type="llama", config=LLAMA)),
        data=DataConfig("stdlib_text", batch_size=4, options={"seq_len": 32, "val_samples": 4}),
        quant=RecipeConfig(name="bf16"), optim=optim,
        trainer=TrainerConfig(max_steps=3, val_every_n_steps=100, enable_progress_bar=False),
        logger=LoggerConfig(wandb=False, quant_stats_every_n_steps=0), out_dir=str(tmp_path),
    )
    assert train(cfg).status == "finished"
    logged = read_metrics(tmp_path, "train/loss")

    # by hand: the same seed, data order, optimizer and clipping; the transformers model itself
    L.seed_everything(cfg.seed)
    train_set, _ = build_datasets("stdlib_text", **cfg.data.options)
    hf = build_hf_model(cfg.model.hf, train_set.vocab_size).model
    opt = build_optimizer(hf, optim)
    sched = build_scheduler(opt, cfg.trainer.max_steps, optim)
    indices = iter(StepSampler(len(train_set), cfg.data.batch_size, seed=cfg.seed))
    by_hand = {}
    for step in range(cfg.trainer.max_steps):
        x, y = (torch.stack(t) for t in zip(*(train_set[next(indices)] for _ in range(cfg.data.batch_size))))
        loss = F.cross_entropy(hf(input_ids=x).logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), cfg.trainer.gradient_clip_val)
        opt.step()
        sched.step()
        by_hand[step] = loss.item()
    assert logged == pytest.approx(by_hand, rel=1e-6)


def test_a_users_token_files_set_the_vocabulary(tmp_path):
    data = tmp_path / "tokens"
    data.mkdir()
    tokens = np.random.default_rng(0).integers(0, 1000, 4000).astype(np.uint16)
    tokens[:2000].tofile(data / "train.bin")
    tokens[2000:].tofile(data / "val.bin")
    (data / "meta.json").write_text(json.dumps({"vocab_size": 1000, "dtype": "uint16"}))
    run = tmp_path / "run"
    run_main(*hf_overrides("llama", **LLAMA), "data=token_file", f"data.options.path={data}", "data.batch_size=4",
             "data.options.seq_len=32", "data.options.val_samples=4", *DEBUG, "trainer.max_steps=1",
             f"hydra.run.dir={run}")
    assert "| model.lm_head | 64 → 1000 |" in (run / "conversion.md").read_text()
    assert abs(read_metrics(run, "train/loss")[0] - np.log(1000)) < 0.5


def save_tiny_llama(folder, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A seeded tiny Llama written with save_pretrained; returns its state dict."""
    torch.manual_seed(123)
    model = build_hf_model(HFModelConfig(model_type="llama", config=LLAMA)).model.to(dtype)
    model.save_pretrained(folder)
    return model.state_dict()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_local_pretrained_folder_loads_its_weights_as_float32(dtype, tmp_path):
    saved = save_tiny_llama(tmp_path, dtype)
    loaded = build_hf_model(HFModelConfig(path=str(tmp_path))).model.state_dict()
    assert sorted(loaded) == sorted(saved)
    for name, value in saved.items():
        assert loaded[name].dtype == torch.float32 and torch.equal(loaded[name], value.float()), name
    fresh = build_hf_model(HFModelConfig(path=str(tmp_path), load_weights=False)).model.state_dict()
    assert not torch.equal(fresh["model.layers.0.mlp.up_proj.weight"], loaded["model.layers.0.mlp.up_proj.weight"])


def test_resume_from_a_checkpoint_of_a_pretrained_model_is_exact(tmp_path):
    save_tiny_llama(tmp_path / "pretrained")
    common = [*hf_overrides(path=tmp_path / "pretrained"), *TINY_DATA, *DEBUG, "quant=nvfp4",
              "quant.bf16_first_blocks=1", "quant.bf16_last_blocks=1", "trainer.max_steps=4",
              "trainer.val_every_n_steps=100", "logger.quant_stats_every_n_steps=0"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_main(*common, "checkpoint.every_n_steps=2", f"hydra.run.dir={full}")
    run_main(*common, f"checkpoint.resume={full / 'checkpoints' / 'step_2.ckpt'}", f"hydra.run.dir={resumed}")
    expected = {s: v for s, v in read_metrics(full, "train/loss").items() if s >= 2}
    assert sorted(expected) == [2, 3]
    assert read_metrics(resumed, "train/loss") == expected


def test_a_linear_layer_the_model_bypasses_is_refused():
    model = build_hf_model(HFModelConfig(model_type="llama", config=LLAMA))
    mlp = model.blocks[2].mlp  # as a fused kernel would: multiplies by down_proj.weight itself
    mlp.forward = lambda x: F.linear(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x), mlp.down_proj.weight)
    x = torch.randint(0, 256, (1, 8))
    with pytest.raises(RuntimeError, match=r"did not call 1 of its 28 linear layers: \['model.model.layers.2.mlp.down_proj'\]"):
        model(x)
    model.eval()
    model(x)  # the check is about training steps


@pytest.mark.parametrize(
    "cfg, data_vocab, error, match",
    [
        (HFModelConfig(), None, ValueError, "needs model.hf.model_type .* or model.hf.path"),
        (HFModelConfig(model_type="lama"), None, ValueError, r"'lama' is not a causal-LM .*valid: \[.*'llama'"),
        (HFModelConfig(model_type="llama", config={**LLAMA, "hiden_size": 32}), None, ValueError,
         r"unknown LlamaConfig keys \['hiden_size'\]"),
        (HFModelConfig(model_type="llama", config={**LLAMA, "vocab_size": 256}), 1000, ValueError,
         r"data's vocabulary \(1000 tokens\) is larger than the model's vocab_size 256"),
        (HFModelConfig(path="no/such/folder"), None, FileNotFoundError, "not a local folder with a config.json"),
    ],
)
def test_bad_hf_config_is_refused_naming_the_field(cfg, data_vocab, error, match):
    with pytest.raises(error, match=match):
        build_hf_model(cfg, data_vocab)


def test_a_folder_without_weights_builds_from_config_json_unless_weights_are_required(tmp_path):
    build_hf_model(HFModelConfig(model_type="llama", config=LLAMA)).model.config.save_pretrained(tmp_path)
    model = build_hf_model(HFModelConfig(path=str(tmp_path)))
    assert model.model.config.hidden_size == 64 and len(model.blocks) == 4
    with pytest.raises(FileNotFoundError, match="load_weights=true but .* holds none of"):
        build_hf_model(HFModelConfig(path=str(tmp_path), load_weights=True))
    with pytest.raises(ValueError, match="model_type 'qwen3' contradicts"):
        build_hf_model(HFModelConfig(model_type="qwen3", path=str(tmp_path)))


def test_without_transformers_model_hf_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[hf\]"'):
        build_hf_model(HFModelConfig(model_type="llama"))


def test_model_overrides_are_refused_for_hf_with_where_its_settings_go(tmp_path):
    cfg = TrainConfig(model=ModelConfig("hf", overrides={"d_model": 64}, hf=HFModelConfig(model_type="llama")),
                      logger=LoggerConfig(wandb=False), out_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"model=hf takes its settings in model.hf .*\{'d_model': 64\}"):
        train(cfg)


def test_byte_data_for_a_pretrained_vocabulary_is_warned_about(tmp_path, caplog):
    torch.manual_seed(0)
    build_hf_model(HFModelConfig(model_type="llama", config={**LLAMA, "vocab_size": 512})).model.save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="fp4train.models.hf"):
        model = build_hf_model(HFModelConfig(path=str(tmp_path)), data_vocab_size=256)
    assert model.model.config.vocab_size == 512
    assert "pretrained vocabulary of 512 tokens, data of 256" in caplog.text
