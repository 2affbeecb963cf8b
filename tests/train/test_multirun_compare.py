"""`-m quant=bf16,fp8,nvfp4` is one study: one W&B group, distinct runs, one plot and one table."""

import json

from fp4train import compare

from .conftest import TINY_LM, run_main


def test_multirun_is_one_group_of_runs_and_ends_with_one_plot_and_table(tmp_path, capsys):
    run_main(*TINY_LM, "logger=wandb", "study=tiny_cmp", f"hydra.sweep.dir={tmp_path}",
             "quant=bf16,fp8,nvfp4", multirun=True)
    out = capsys.readouterr().out
    run_dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and (p / "run_info.json").exists())
    assert [p.name for p in run_dirs] == ["0_bf16", "1_fp8", "2_nvfp4"]
    infos = [json.loads((p / "run_info.json").read_text()) for p in run_dirs]
    assert {i["group"] for i in infos} == {"tiny_cmp"}
    # wandb.finish() between jobs: each job has its own offline W&B run
    offline = [list((p / "wandb").glob("offline-run-*")) for p in run_dirs]
    assert [len(o) for o in offline] == [1, 1, 1]

    assert sorted(p.name for p in tmp_path.glob("comparison.*")) == ["comparison.md", "comparison.png"]
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "comparison.md").read_text()
    assert table in out and f"plot: {tmp_path / 'comparison.png'}" in out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "recipe" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["bf16", "fp8", "nvfp4"]
    assert "baseline" in rows[0] and all("%" in r for r in rows[1:])

    # the same report from the CLI, from the CSV logs and from the offline W&B runs
    compare.main([str(tmp_path), "--out", str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "comparison.md").read_text() == table
    from_wandb = compare.load_wandb_offline(tmp_path)
    from_csv = compare.load_csv_runs(tmp_path)
    assert [r.recipe for r in from_wandb] == ["bf16", "fp8", "nvfp4"]
    assert {r.group for r in from_wandb} == {"tiny_cmp"}  # the W&B group of every run
    for w, c in zip(from_wandb, from_csv):
        assert w.curves["train/loss"] == c.curves["train/loss"]
        assert w.overrides == c.overrides


def test_relative_gap_is_to_the_bf16_final_validation_loss():
    runs = [
        compare.Run("0_bf16", "bf16", ["quant=bf16"], {"val/loss": [(9, 2.0)]}),
        compare.Run("1_nvfp4", "nvfp4", ["quant=nvfp4"], {"val/loss": [(4, 3.0), (9, 2.03)]}),
        compare.Run("2_fp8", "fp8", ["quant=fp8"], {"train/loss": [(9, 2.0)]}, status="diverged"),
    ]
    table = compare.comparison_table(runs)
    assert "| nvfp4 | nvfp4 | 10 | 2.0300 (val) | +1.50% | finished |" in table
    assert "| fp8 | fp8 | 10 | 2.0000 (train) | n/a | diverged |" in table


def test_runs_are_labelled_by_the_overrides_that_vary():
    runs = [
        compare.Run("a", "nvfp4", ["quant=nvfp4", "quant.rht=true", "trainer.max_steps=9"]),
        compare.Run("b", "nvfp4", ["quant=nvfp4", "quant.rht=false", "trainer.max_steps=9"]),
    ]
    compare.comparison_table(runs)
    assert [r.label for r in runs] == ["quant.rht=true", "quant.rht=false"]


def test_labels_leave_out_how_a_run_was_launched_logged_and_saved():
    # before: "quartet checkpoint.save_last=false trainer.cuda_graph=true …" beside a sweep's
    # "nvfp4 … launcher=parallel trainer.cuda_graph=True"
    runs = [
        compare.Run("a", "nvfp4", ["quant=nvfp4", "launcher=parallel", "trainer.cuda_graph=True", "seed=0",
                                   "hydra.launcher.jobs_per_gpu=4", "checkpoint.save_last=False"]),
        compare.Run("b", "quartet", ["quant=quartet", "trainer.cuda_graph=true", "seed=0", "logger=csv",
                                     "trainer.enable_progress_bar=false", "+model.overrides.d_model=64"]),
        compare.Run("c", "quartet", ["quant=quartet", "trainer.cuda_graph=false", "seed=1", "logger=csv"]),
    ]
    compare.comparison_table(runs)
    assert [r.label for r in runs] == ["nvfp4 trainer.cuda_graph=true", "quartet model.overrides.d_model=64 trainer.cuda_graph=true",
                                       "quartet trainer.cuda_graph=false"]


def test_online_wandb_group_is_read_in_full_with_scan_history(monkeypatch):
    import wandb

    class FakeRun:
        def __init__(self, name, recipe, losses):
            self.name, self.state = name, "finished"
            self.config = {"quant": {"name": recipe}, "overrides": [f"quant={recipe}"]}
            self._rows = [{"trainer/global_step": s, "train/loss": v} for s, v in enumerate(losses)]

        def scan_history(self, keys=None):
            return iter(self._rows)

        def history(self, *args, **kwargs):
            raise AssertionError("history() samples 500 points; use scan_history()")

    class FakeApi:
        def runs(self, path, filters):
            assert path == "me/proj" and filters == {"group": "study"}
            return [FakeRun("a", "bf16", [3.0] * 600), FakeRun("b", "nvfp4", [3.3] * 600)]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    runs = compare.load_runs("wandb:me/proj/study")
    assert [len(r.curves["train/loss"]) for r in runs] == [600, 600]
    assert "| nvfp4 | nvfp4 | 600 | 3.3000 (train) | +10.00% | finished |" in compare.comparison_table(runs)
