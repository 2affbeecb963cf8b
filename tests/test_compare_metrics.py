"""`fp4train.compare --metrics` and `--closure` from synthetic run folders with known numbers."""

import json
import statistics

import matplotlib
import numpy as np
import pytest

from fp4train import compare

from .test_compare_report import write_run

matplotlib.use("Agg")

# final val/acc per (recipe, seed), logged after 0.5 at the first validation; mxfp4 - bf16 per seed:
# -5, -4, -6 points. osc/mean/oscillation_ratio is logged by the quantized recipes only.
ACC = {("bf16", 0): 0.90, ("bf16", 1): 0.91, ("bf16", 2): 0.92,
       ("mxfp4", 0): 0.85, ("mxfp4", 1): 0.87, ("mxfp4", 2): 0.86}
OSC = {0: 4.0, 1: 6.0, 2: 8.0}
METRICS = ["val/acc", "osc/mean/oscillation_ratio"]


def metric_study(root):
    for (recipe, seed), acc in ACC.items():
        logged = {"val/acc": {1: 0.5, 2: acc}}
        if recipe != "bf16":
            logged["osc/mean/oscillation_ratio"] = {0: 1.0, 2: OSC[seed]}
        write_run(root, f"{seed}_{recipe}", recipe, seed, [3.0, 2.5, 2.0], {1: 2.6, 2: 2.0}, logged=logged)
    return root


def test_metrics_table_gives_final_values_and_the_accuracy_difference_in_points_paired_by_seed(tmp_path):
    runs = compare.load_csv_runs(metric_study(tmp_path), METRICS)
    assert runs[0].curves["val/acc"] == [(1, 0.5), (2, 0.90)]
    table = compare.metrics_table(runs, METRICS)
    lines = table.splitlines()
    assert lines[0] == "| run | recipe | val/acc | Δ val/acc to bf16 (points) | osc/mean/oscillation_ratio |"
    # bf16: 0.90, 0.91, 0.92; mxfp4: 0.85, 0.87, 0.86 and its per-seed differences -5, -4, -6
    assert "| bf16 | bf16 | 0.9100 ± 0.0100 (n=3) | baseline | not logged |" in lines
    assert "| mxfp4 | mxfp4 | 0.8600 ± 0.0100 (n=3) | -5.00 ± 1.00 (n=3) | 6.000 ± 2.000 (n=3) |" in lines


def test_an_unpaired_seed_is_compared_with_the_baseline_mean_and_a_diverged_run_is_left_out(tmp_path):
    for seed, acc in ((0, 0.90), (1, 0.92)):
        write_run(tmp_path, f"{seed}_bf16", "bf16", seed, [3.0, 2.0], {1: 2.0}, logged={"val/acc": {1: acc}})
    write_run(tmp_path, "7_fp8", "fp8", 7, [3.0, 2.1], {1: 2.1}, logged={"val/acc": {1: 0.88}})
    (write_run(tmp_path, "8_fp8", "fp8", 8, [3.0, 2.1], {1: 2.1}, logged={"val/acc": {1: 0.10}})
     / "DIVERGED").write_text("nan")
    table = compare.metrics_table(compare.load_csv_runs(tmp_path, ["val/acc"]), ["val/acc"])
    assert "| fp8 | fp8 | 0.8800 (n=1) | -3.00 |" in table  # 0.88 − mean(0.90, 0.92)


def test_a_metric_nobody_logged_is_an_error_naming_it_and_the_keys_there_are(tmp_path):
    metric_study(tmp_path / "runs")
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_:
        compare.main([str(tmp_path / "runs"), "--out", str(out), "--metrics", "val/acc", "val/accuracy"])
    err = str(exit_.value.code)
    assert err.startswith("fp4train-compare: ")
    assert "no run logged 'val/accuracy'" in err and "'val/acc'" not in err
    # every run's keys, the baseline's (which logs no osc/*) first
    assert err.endswith("the runs logged: train/loss, val/loss, val/acc, osc/mean/oscillation_ratio")
    assert not out.exists()  # nothing written
    many = compare.Run("a", "bf16", curves={"val/loss": [(0, 1.0)]}, logged=[f"k{i}" for i in range(25)])
    with pytest.raises(ValueError, match=r"the runs logged: k0, .*, k19, … \(25 in all\)$"):
        compare.metrics_table([many], ["val/acc"])


def test_metrics_plot_has_a_panel_per_metric_with_the_seed_mean_and_band(tmp_path):
    runs = compare.load_csv_runs(metric_study(tmp_path), METRICS)
    fig = compare.plot_metrics(runs, METRICS)
    acc_ax, osc_ax = fig.axes
    assert [ax.get_title() for ax in fig.axes] == METRICS
    assert not acc_ax.get_shared_y_axes().joined(acc_ax, osc_ax)
    (line,) = [ln for ln in osc_ax.lines if ln.get_label() == "mxfp4 (n=3)"]
    assert list(line.get_xdata()) == [1, 3]  # logged steps 0 and 2, drawn at the step after them
    assert line.get_ydata()[-1] == pytest.approx(statistics.fmean(OSC.values()))
    band = osc_ax.collections[0].get_paths()[0].vertices
    at_last = band[np.isclose(band[:, 0], 3), 1]
    assert min(at_last) == pytest.approx(4.0) and max(at_last) == pytest.approx(8.0)
    assert [ln.get_label() for ln in acc_ax.lines] == ["bf16 (n=3)", "mxfp4 (n=3)"]
    # the loss plot draws its groups with the same styles (one helper draws both)
    loss_lines = compare.plot_runs(runs).axes[1].lines
    assert [(ln.get_linestyle(), ln.get_marker()) for ln in loss_lines] == \
           [(ln.get_linestyle(), ln.get_marker()) for ln in acc_ax.lines]


def closure_study(root, bf16, mxfp4, tetrajet, acc=None):
    """Final val losses per recipe (one run per seed); ``acc`` {recipe: [val/acc per seed]}."""
    for recipe, losses in (("bf16", bf16), ("mxfp4", mxfp4), ("tetrajet", tetrajet)):
        for seed, loss in enumerate(losses):
            logged = {"val/acc": {1: acc[recipe][seed]}} if acc else None
            write_run(root, f"{seed}_{recipe}", recipe, seed, [3.0, loss], {1: loss}, logged=logged)
    return root


def test_closure_and_its_bootstrap_interval_by_hand():
    # closure = (2.4 − mean(2.1, 2.3)) / (2.4 − 2.0) = 0.5. bf16 and mxfp4 have no spread, so a
    # resample's closure depends only on tetrajet's resampled mean: 2.1, 2.2 or 2.3 with
    # probabilities 1/4, 1/2, 1/4, i.e. closure 0.75, 0.5, 0.25; percentiles 5 and 95 of 2000
    # such draws are 0.25 and 0.75.
    c, low, high, flipped = compare.gap_closure([2.0] * 3, [2.4] * 3, [2.1, 2.3])
    assert (c, low, high, flipped) == pytest.approx((0.5, 0.25, 0.75, 0.0))
    assert compare.gap_closure([2.0] * 3, [2.4] * 3, [2.1, 2.3]) == (c, low, high, flipped)  # fixed seed


def test_closure_table_from_run_folders(tmp_path):
    runs = compare.load_csv_runs(closure_study(tmp_path, [2.0] * 3, [2.4] * 3, [2.1, 2.3]))
    table = compare.closure_table(runs, "mxfp4")
    assert "mxfp4's gap: 2.4000 − 2.0000 = +0.4000 (val, n=3 and 3); seed spread sd_bf16 + sd_mxfp4 = 0.0000." in table
    assert "| tetrajet | tetrajet | 2.2000 ± 0.1414 (n=2) | 50.0% | [25.0%, 75.0%] |  |" in table
    assert "not meaningful" not in table
    assert "| bf16 |" not in table and "| mxfp4 |" not in table  # only the other groups have rows
    with pytest.raises(ValueError, match="closure reference 'fp8' is not one group.*'bf16', 'mxfp4', 'tetrajet'"):
        compare.closure_table(runs, "fp8")
    with pytest.raises(ValueError, match="is the baseline"):
        compare.closure_table(runs, "bf16")


def test_closure_says_when_the_reference_gap_is_within_the_seed_spread(tmp_path):
    # gap 2.3 − 2.2 = 0.1, spread sd_bf16 + sd_mxfp4 = 0.2 + 0.2
    runs = compare.load_csv_runs(closure_study(tmp_path, [2.0, 2.2, 2.4], [2.1, 2.3, 2.5], [2.15, 2.25, 2.35]))
    table = compare.closure_table(runs, "mxfp4")
    verdict = "mxfp4's gap is within the seed spread: the closure is not meaningful"
    assert f"seed spread sd_bf16 + sd_mxfp4 = 0.4000. **Note: {verdict}.**" in table
    (row,) = [line for line in table.splitlines() if line.startswith("| tetrajet |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:4] == ["2.2500 ± 0.1000 (n=3)", "50.0%"]  # (2.3 − 2.25) / 0.1: shown, and flagged
    assert cells[5].startswith(f"{verdict}; mxfp4's gap vanishes or reverses in ")
    # the reference no better than the baseline; a single seed: no spread to judge against
    runs = compare.load_csv_runs(closure_study(tmp_path / "better", [2.0, 2.2], [1.9, 2.1], [2.0, 2.1]))
    assert "**Note: mxfp4 is not worse than bf16: there is no gap to close.**" in compare.closure_table(runs, "mxfp4")
    runs = compare.load_csv_runs(closure_study(tmp_path / "one", [2.0], [2.3], [2.15]))
    table = compare.closure_table(runs, "mxfp4")
    assert "sd_mxfp4 = n/a. **Note: one seed in bf16 or mxfp4: no seed spread to judge the gap against.**" in table
    assert "| tetrajet | tetrajet | 2.1500 (n=1) | 50.0% | [50.0%, 50.0%] | one seed in bf16" in table


def test_cli_writes_the_closure_of_loss_and_accuracy_and_the_metrics_report(tmp_path, capsys):
    # accuracy: closure = (0.8 − mean(0.85, 0.87)) / (0.8 − 0.9) = 0.6, tetrajet's resampled mean
    # 0.85, 0.86 or 0.87 gives 0.5, 0.6, 0.7: the interval is [50%, 70%]
    closure_study(tmp_path / "runs", [2.0] * 3, [2.4] * 3, [2.1, 2.3],
                  acc={"bf16": [0.9] * 3, "mxfp4": [0.8] * 3, "tetrajet": [0.85, 0.87]})
    out = tmp_path / "report"
    compare.main([str(tmp_path / "runs"), "--out", str(out), "--metrics", "val/acc", "--closure", "mxfp4"])
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "comparison.md", "comparison.png", "comparison_closure.md", "comparison_gap.png",
        "comparison_metrics.md", "comparison_metrics.png"]
    assert (out / "comparison_metrics.png").read_bytes()[:4] == b"\x89PNG"
    closure = (out / "comparison_closure.md").read_text()
    assert closure.strip() in printed and (out / "comparison_metrics.md").read_text().strip() in printed
    assert f"plot: {out / 'comparison_metrics.png'}" in printed and f"table: {out / 'comparison_closure.md'}" in printed
    loss, acc = closure.split("### ")[1:]
    assert "| tetrajet | tetrajet | 2.2000 ± 0.1414 (n=2) | 50.0% | [25.0%, 75.0%] |  |" in loss
    assert acc.startswith("Share of mxfp4's val/acc gap to bf16 closed")
    assert "| tetrajet | tetrajet | 0.8600 ± 0.0141 (n=2) | 60.0% | [50.0%, 70.0%] |  |" in acc
    assert "| tetrajet | tetrajet | 0.8600 ± 0.0141 (n=2) | -4.00 ± 1.41 (n=2) |" in (out / "comparison_metrics.md").read_text()


def test_online_wandb_reads_each_key_in_a_scan_of_its_own(monkeypatch):
    """W&B's scan_history(keys=...) returns only rows holding every key asked for; training and
    validation values are logged in rows of their own."""
    import wandb

    class FakeRun:
        name, state, config = "a", "finished", {"quant": {"name": "bf16"}, "overrides": ["quant=bf16"]}
        summary = {"train/loss": 2.0, "val/loss": 2.1, "val/acc": 0.9, "_step": 3, "trainer/global_step": 2}
        rows = [{"trainer/global_step": 0, "train/loss": 3.0}, {"trainer/global_step": 1, "train/loss": 2.0},
                {"trainer/global_step": 1, "val/loss": 2.1, "val/acc": 0.9}]

        def scan_history(self, keys=None):
            return iter([{k: r[k] for k in keys} for r in self.rows if all(k in r for k in keys)])

    class FakeApi:
        def runs(self, path, filters):
            return [FakeRun()]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    (run,) = compare.load_runs("wandb:me/proj/study", ["val/acc"])
    assert run.curves == {"train/loss": [(0, 3.0), (1, 2.0)], "val/loss": [(1, 2.1)], "val/acc": [(1, 0.9)]}
    assert run.logged == ["train/loss", "val/loss", "val/acc"]


def test_offline_wandb_keeps_the_metrics_asked_for(tmp_path, monkeypatch):
    (tmp_path / "wandb" / "offline-run-1").mkdir(parents=True)
    records = [{"type": "run", "run": {"config": {"update": {"quant": {"name": "bf16"}, "seed": 0}}, "run_group": "g"}},
               {"type": "history", "history": {"item": {"trainer/global_step": 0, "train/loss": 3.0, "_step": 0}}},
               {"type": "history", "history": {"item": {"trainer/global_step": 0, "val/acc": 0.5, "osc/x": 1.0}}}]

    class Done:
        stdout = "\n".join(map(json.dumps, records))

    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: Done())
    (run,) = compare.load_runs(str(tmp_path), ["val/acc"])
    assert run.curves == {"train/loss": [(0, 3.0)], "val/acc": [(0, 0.5)]}
    assert run.logged == ["train/loss", "val/acc", "osc/x"]
