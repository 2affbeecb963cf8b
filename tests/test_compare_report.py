"""The study report from synthetic run folders: seed groups, paired gaps, the loss and gap plots."""

import csv
import json
import math
import statistics

import matplotlib
import numpy as np
import pytest
import yaml

from fp4train import compare

matplotlib.use("Agg")


def write_run(root, name, recipe, seed, train, val=None, batch=4, seq_len=8, extra=(), logged=None, max_steps=None):
    """A run folder as fp4train.train writes it: run_info.json, .hydra/config.yaml, csv/metrics.csv
    with train losses at logged steps 0..n-1, ``val`` {logged step: loss} (Lightning logs the
    validation after k steps at step k − 1) and ``logged`` {column: {logged step: value}}, one row
    per value as Lightning's CSV logger writes a log call."""
    run = root / name
    (run / "csv").mkdir(parents=True)
    (run / ".hydra").mkdir()
    overrides = [f"quant={recipe}", f"seed={seed}", *extra]
    (run / "run_info.json").write_text(json.dumps(
        {"study": "toy_study", "group": "toy_study", "recipe": recipe, "model": "hybrid_lm",
         "data": "stdlib_text", "overrides": overrides}))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"name": "hybrid_lm", "size": "micro"}, "seed": seed, "study": "toy_study",
         "data": {"name": "stdlib_text", "batch_size": batch, "options": {"seq_len": seq_len}},
         **({"trainer": {"max_steps": max_steps}} if max_steps else {})}))
    with (run / "csv" / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        columns = list(logged or {})
        writer.writerow(["epoch", "step", "train/loss", "val/loss", *columns])
        for step, value in enumerate(train):
            writer.writerow([0, step, value, ""] + [""] * len(columns))
        for step, value in (val or {}).items():
            writer.writerow([0, step, "", value] + [""] * len(columns))
        for i, column in enumerate(columns):
            for step, value in logged[column].items():
                writer.writerow([0, step, "", ""] + [value if j == i else "" for j in range(len(columns))])
    return run


# final val losses per (recipe, seed): nvfp4's gaps to the bf16 run of its seed are +1%, +1%, 0%
FINAL = {("bf16", 0): 2.0, ("bf16", 1): 2.1, ("bf16", 2): 2.2,
         ("nvfp4", 0): 2.02, ("nvfp4", 1): 2.121, ("nvfp4", 2): 2.2}


def seed_study(root, sweeps=1):
    """bf16 and nvfp4 over seeds 0-2, 3 steps, validation after steps 2 and 3 (logged at 1, 2)."""
    for (recipe, seed), last in FINAL.items():
        sweep = root / f"sweep{seed % sweeps}"
        write_run(sweep, f"{seed}_{recipe}", recipe, seed, [3.0, 2.5, last], {1: 2.6, 2: last})
    return [root / f"sweep{i}" for i in range(sweeps)]


def test_seed_groups_give_mean_sd_and_the_gap_paired_by_seed(tmp_path):
    runs = [r for d in seed_study(tmp_path) for r in compare.load_csv_runs(d)]
    table = compare.comparison_table(runs)
    bf16 = [FINAL["bf16", s] for s in range(3)]
    gaps = [FINAL["nvfp4", s] / FINAL["bf16", s] - 1 for s in range(3)]
    assert gaps == pytest.approx([0.01, 0.01, 0.0])
    spread = statistics.stdev([(x - statistics.fmean(bf16)) / statistics.fmean(bf16) for x in bf16])
    assert (f"| bf16 | bf16 | 3 | {statistics.fmean(bf16):.4f} ± {statistics.stdev(bf16):.4f} (val, n=3) "
            f"| baseline ±{spread:.2%} | finished |") in table
    nvfp4 = [FINAL["nvfp4", s] for s in range(3)]
    assert (f"| nvfp4 | nvfp4 | 3 | {statistics.fmean(nvfp4):.4f} ± {statistics.stdev(nvfp4):.4f} (val, n=3) "
            f"| {statistics.fmean(gaps):+.2%} ± {statistics.stdev(gaps):.2%} | finished |") in table
    assert "| 2.1137 ± 0.0902 (val, n=3) | +0.67% ± 0.58% |" in table  # the same numbers, by hand
    assert "seed=" not in table  # seeds form a row, not a label


def test_unpaired_seed_is_compared_with_the_baseline_mean(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, f"{seed}_bf16", "bf16", seed, [3.0, 2.0 + seed / 10], {1: 2.0 + seed / 10})
    write_run(tmp_path, "7_fp8", "fp8", 7, [3.0, 2.1], {1: 2.1})
    table = compare.comparison_table(compare.load_csv_runs(tmp_path))
    assert f"| fp8 | fp8 | 2 | 2.1000 (val) | {2.1 / 2.05 - 1:+.2%} | finished |" in table


def test_a_diverged_seed_is_left_out_of_the_statistics_and_counted_in_the_status(tmp_path):
    write_run(tmp_path, "0_bf16", "bf16", 0, [3.0, 2.0], {1: 2.0})
    write_run(tmp_path, "0_nvfp4", "nvfp4", 0, [3.0, 2.1], {1: 2.1})
    (write_run(tmp_path, "1_nvfp4", "nvfp4", 1, [3.0, float("nan")]) / "DIVERGED").write_text("nan at step 1")
    table = compare.comparison_table(compare.load_csv_runs(tmp_path))
    assert "| nvfp4 | nvfp4 | 2 | 2.1000 (val) | +5.00% | 1 finished, 1 diverged |" in table


def test_loss_plot_names_study_and_model_and_gives_train_and_val_their_own_y_axis(tmp_path):
    fig = compare.plot_runs(compare.load_csv_runs(seed_study(tmp_path)[0]))
    assert fig._suptitle.get_text() == "study toy_study: hybrid_lm micro on stdlib_text"
    train_ax, val_ax = fig.axes
    assert not train_ax.get_shared_y_axes().joined(train_ax, val_ax)
    assert (train_ax.get_ylabel(), val_ax.get_ylabel()) == ("train/loss", "val/loss")
    assert train_ax.get_ylim() != val_ax.get_ylim()


def test_loss_plot_steps_are_integers_and_val_points_sit_at_the_steps_the_table_reports(tmp_path):
    runs = compare.load_csv_runs(seed_study(tmp_path)[0])
    steps_in_table = {int(row.split("|")[3]) for row in compare.comparison_table(runs).splitlines()[2:] if "|" in row}
    fig = compare.plot_runs(runs)
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    val_ax = fig.axes[1]
    for line in val_ax.lines:
        assert list(line.get_xdata()) == [2, 3]  # validations after steps 2 and 3, logged at 1 and 2
    assert steps_in_table == {3} and max(fig.axes[0].lines[0].get_xdata()) == 3


def test_a_single_validation_still_gets_integer_steps(tmp_path):
    write_run(tmp_path, "a", "bf16", 0, [3.0, 2.0], {1: 2.0})
    fig = compare.plot_runs(compare.load_csv_runs(tmp_path))
    fig.canvas.draw()
    val_ax = fig.axes[1]
    ticks = [t for t in val_ax.get_xticks() if val_ax.get_xlim()[0] <= t <= val_ax.get_xlim()[1]]
    assert ticks == [1, 2] and list(val_ax.lines[0].get_xdata()) == [2]


def test_coinciding_runs_stay_visible_with_their_own_line_style_marker_and_width(tmp_path):
    for recipe in ("bf16", "fp8", "nvfp4"):
        write_run(tmp_path, recipe, recipe, 0, [3.0, 2.5, 2.0], {1: 2.4, 2: 2.0})
    fig = compare.plot_runs(compare.load_csv_runs(tmp_path))
    for ax in fig.axes:
        lines = ax.lines
        assert len(lines) == 3 and all(np.array_equal(lines[0].get_ydata(), ln.get_ydata()) for ln in lines)
        assert len({(ln.get_linestyle(), ln.get_marker()) for ln in lines}) == 3
        widths = [ln.get_linewidth() for ln in lines]
        assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]  # later lines drawn thinner on top
        assert all(ln.get_markerfacecolor() == "none" for ln in lines)  # hollow: the markers beneath show through


def test_gap_plot_is_against_tokens_with_the_seed_bands(tmp_path):
    runs = [r for d in seed_study(tmp_path, sweeps=2) for r in compare.load_csv_runs(d)]
    fig = compare.plot_gaps(runs)
    assert fig._suptitle.get_text().startswith("study toy_study: hybrid_lm micro on stdlib_text")
    train_ax, val_ax = fig.axes
    assert val_ax.get_xlabel() == "tokens (step × 32)"  # batch 4 × seq_len 8
    (nvfp4,) = [line for line in val_ax.lines if not line.get_label().startswith("_")]  # not the y=0 line
    assert list(nvfp4.get_xdata()) == [64, 96]
    gaps_last = [FINAL["nvfp4", s] / FINAL["bf16", s] - 1 for s in range(3)]
    assert nvfp4.get_ydata()[-1] == pytest.approx(statistics.fmean(gaps_last))
    assert nvfp4.get_label() == "nvfp4 (n=3)"
    labels = [c.get_label() for c in val_ax.collections]
    assert labels[0] == "bf16 seed spread (n=3)" and len(labels) == 2  # bf16's band and nvfp4's band
    # nvfp4's band spans its seeds' gaps at the last validation
    band = val_ax.collections[1].get_paths()[0].vertices
    at_last = band[np.isclose(band[:, 0], 96), 1]
    assert min(at_last) == pytest.approx(min(gaps_last)) and max(at_last) == pytest.approx(max(gaps_last))


def test_gap_plot_is_none_without_a_baseline(tmp_path):
    write_run(tmp_path, "a", "fp8", 0, [3.0, 2.0], {1: 2.0})
    write_run(tmp_path, "b", "nvfp4", 0, [3.0, 2.1], {1: 2.1})
    assert compare.plot_gaps(compare.load_csv_runs(tmp_path)) is None


def test_cli_reads_several_sweep_dirs_as_one_study(tmp_path, capsys):
    sweeps = seed_study(tmp_path / "runs", sweeps=2)
    out = tmp_path / "report"
    compare.main([*map(str, sweeps), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "(val, n=3)" in printed and f"plot: {out / 'comparison_gap.png'}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["comparison.md", "comparison.png", "comparison_gap.png"]
    with pytest.raises(SystemExit):
        compare.main([*map(str, sweeps)])
    assert "give --out DIR" in capsys.readouterr().err


def test_baseline_may_be_named_by_label():
    runs = [
        compare.Run("a", "bf16", ["quant=bf16", "optim.lr=1e-3"], {"val/loss": [(9, 2.0)]}),
        compare.Run("b", "bf16", ["quant=bf16", "optim.lr=3e-3"], {"val/loss": [(9, 2.2)]}),
        compare.Run("c", "nvfp4", ["quant=nvfp4", "optim.lr=1e-3"], {"val/loss": [(9, 2.02)]}),
    ]
    assert "gaps are n/a" in compare.comparison_table(runs)  # two bf16 groups: ambiguous
    table = compare.comparison_table(runs, baseline="bf16 optim.lr=1e-3")
    assert "| nvfp4 optim.lr=1e-3 | nvfp4 | 10 | 2.0200 (val) | +1.00% | finished |" in table
    assert not math.isnan(compare.final_loss(runs[1])[1])


def test_a_run_stopped_short_of_max_steps_is_incomplete_and_at_step_compares_at_equal_steps(tmp_path):
    from fp4train.compare import at_step, comparison_table, load_csv_runs

    # bf16 ran its 4 steps; nvfp4 was stopped after 2 of 4 (a time limit): its last loss is not final
    write_run(tmp_path, "0_bf16", "bf16", 0, [3.0, 2.5, 2.2, 2.0], val={1: 2.6, 3: 2.0}, max_steps=4)
    write_run(tmp_path, "1_nvfp4", "nvfp4", 0, [3.0, 2.6], val={1: 2.73}, max_steps=4)
    runs = load_csv_runs(tmp_path)
    assert {r.recipe: r.status for r in runs} == {"bf16": "finished", "nvfp4": "incomplete"}
    assert "| nvfp4 | nvfp4 | 2 | 2.7300 (val) | n/a | incomplete |" in comparison_table(runs)
    # after 2 steps both stood at their step-1 validation: nvfp4 is 5% behind
    table = comparison_table(at_step(runs, 2))
    assert "| nvfp4 | nvfp4 | 2 | 2.7300 (val) | +5.00% | finished |" in table
    assert "| bf16 | bf16 | 2 | 2.6000 (val) | baseline | finished |" in table
    assert {r.status for r in at_step(runs, 3)} == {"finished", "incomplete"}
    with pytest.raises(ValueError, match="step >= 1"):
        at_step(runs, 0)
