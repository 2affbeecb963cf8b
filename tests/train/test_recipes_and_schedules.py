"""Study recipes compose and run; the precision schedule and gradient accumulation act per step."""

import torch
import pytest

from .conftest import TINY_LM, TINY_VIT, read_metrics, run_main


def test_nvfp4_hybrid_lm_recipe_keeps_first_and_last_block_in_bf16(tmp_path):
    recipe_fields = ("quant.bf16_", "quant=")  # what the recipe decides, not the tiny defaults
    tiny = [o for o in TINY_LM if not o.startswith(recipe_fields)]
    run_main("recipe=nvfp4_hybrid_lm", *tiny, f"hydra.run.dir={tmp_path}")
    table = (tmp_path / "conversion.md").read_text()
    assert "Conversion to recipe 'nvfp4': 4 of 9 linear layers quantized" in table  # only the attention block
    assert "first 1 blocks in BF16" in table and "last 1 blocks in BF16" in table
    assert sorted(read_metrics(tmp_path, "train/lr")) == [0, 1, 2]


def test_tetrajet_vit_recipe_runs_q_ema_through_the_optimizer_wrapper(tmp_path):
    run_main("recipe=tetrajet_vit", *TINY_VIT, "quant=tetrajet_qema", f"hydra.run.dir={tmp_path}")
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state["model.blocks.0.attn.qkv._extra_state"]["ema_updates"] == 3  # one per optimizer step
    assert "model.blocks.0.attn.qkv.weight_ema" in state


def test_precision_schedule_switches_quantized_gemms_off_late_in_training(tmp_path):
    run_main(*TINY_LM, "quant=nvfp4", "trainer.max_steps=4", "logger.quant_stats_every_n_steps=1",
             "precision_schedule.switch_at=0.5", "precision_schedule.scope=forward", f"hydra.run.dir={tmp_path}")
    # Fprop quant stats exist while Fprop is quantized (steps 0, 1), not after the switch
    assert sorted(read_metrics(tmp_path, "quant/blocks.0.mixer.in_proj/w_qsnr_db")) == [0, 1]


def test_gradient_accumulation_matches_one_batch_of_the_same_global_size(tmp_path):
    # BF16: per-tensor FP8 scales would legitimately differ between a micro-batch and the batch
    common = [*TINY_LM, "trainer.max_steps=4", "data.batch_size=8"]
    run_main(*common, f"hydra.run.dir={tmp_path / 'one'}")
    run_main(*common, "trainer.accumulate_grad_batches=2", f"hydra.run.dir={tmp_path / 'acc'}")
    one, acc = read_metrics(tmp_path / "one", "val/loss"), read_metrics(tmp_path / "acc", "val/loss")
    assert sorted(one) == sorted(acc) == [1, 3]
    for step in one:
        assert acc[step] == pytest.approx(one[step], rel=1e-4)
