"""`-m launcher=parallel`: an fp4train sweep's jobs run side by side and end with one report."""

import json

from .conftest import REPO, TINY_LM, read_metrics, run_main


def test_parallel_micro_sweep_on_text_folders_ends_with_the_comparison(tmp_path, capsys):
    # two jobs at once on CPU, both on the byte corpus of fp4train's own sources, built once
    overrides = [o for o in TINY_LM if not o.startswith(("data=", "trainer.max_steps="))]
    run_main(*overrides, "trainer.max_steps=2", "launcher=parallel", f"hydra.sweep.dir={tmp_path}",
             "data=text_folders", f"data.options.roots=[{REPO / 'fp4train'}]", "data.options.val_fraction=0.2",
             f"data.options.cache_dir={tmp_path / 'cache'}", "quant=bf16,nvfp4", multirun=True)
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "parallel_jobs.json").read_text())
    assert [(s["job"], s["status"]) for s in summary] == [(0, "completed"), (1, "completed")]
    for job, name in enumerate(["0_bf16", "1_nvfp4"]):
        run = tmp_path / name
        val = read_metrics(run, "val/loss")
        assert sorted(read_metrics(run, "train/loss")) == [0, 1] and list(val) == [1]
        assert summary[job]["return_value"] == val[1]  # the sweep's return value: the final val loss
        log = (run / "job.log").read_text() + (run / "train.log").read_text()
        assert "text_folders" in log and "bytes:" in log  # the corpus size is reported
    assert len(list((tmp_path / "cache").glob("folders-*"))) == 1  # one build for both jobs
    table = (tmp_path / "comparison.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("| ")]
    assert rows == ["bf16", "nvfp4"] and table in out
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
