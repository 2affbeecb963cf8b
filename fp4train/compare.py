"""Compare the runs of a study: a Markdown table of final losses with their relative gap to the
BF16 baseline, a PNG of the loss curves, and a PNG of the relative loss gap over tokens.

``python -m fp4train.compare SOURCE [SOURCE ...] [--out DIR] [--baseline bf16]``; each SOURCE is,
in order of preference:

* a directory holding run folders written by ``fp4train.train`` (a Hydra multirun directory, or
  any parent): each run's ``csv/metrics.csv``, ``run_info.json`` and ``.hydra/config.yaml``;
* a directory of offline W&B runs (``offline-run-*`` folders), read through
  ``wandb leet inspect --json`` (W&B keeps no other readable copy offline);
* ``wandb:ENTITY/PROJECT/GROUP``: an online W&B group through ``wandb.Api`` and
  ``Run.scan_history`` (``history()`` would sample 500 points).

Runs are grouped by their label: the command-line overrides that vary across the study, ``seed``
left out, so the seeds of one recipe or ablation form one row. The gap is the NVFP4 paper's
relative loss error (arXiv 2509.25149 §4) ``(L_recipe − L_bf16) / L_bf16`` of the final
validation loss (the final training loss, averaged over the last 10% of logged steps, when a run
has no validation loss), taken per seed against the baseline run of the same seed (else against
the baseline's mean) and given as mean ± sample sd over seeds. The gap plot draws the same ratio
at every step of the smoothed training loss and at every validation, against tokens seen (step ×
``data.batch_size`` × ``data.options.seq_len`` of the run's config), with the seeds' min–max band.
A Hydra multirun ends with this report through ``MultirunReport`` (conf/train.yaml).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Group", "MultirunReport", "Run", "comparison_table", "final_loss", "group_runs", "load_csv_runs",
    "load_runs", "load_wandb_group", "load_wandb_offline", "main", "plot_gaps", "plot_runs", "write_report",
]

LOSS_KEYS = ("train/loss", "val/loss")
REPORT_STEM = "comparison"
SEED_KEY = "seed"


@dataclass
class Run:
    """One run's loss curves: ``curves[metric]`` is a list of (logged step, value), where logged
    step s belongs to the (s+1)-th optimizer step (Lightning logs the validation after k steps at
    k − 1). ``items_per_step``: tokens (``item_name``) or images of one optimizer step."""

    name: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    status: str = "finished"
    group: str = ""
    label: str = ""
    study: str = ""
    model: str = ""
    seed: int | None = None
    items_per_step: int | None = None
    item_name: str = "tokens"


@dataclass
class Group:
    """The runs of one label (one recipe or ablation, its seeds)."""

    label: str
    recipe: str
    runs: list[Run]

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status == "finished"]


def _curves_from_rows(rows: Iterable[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = {k: [] for k in LOSS_KEYS}
    for row in rows:
        step = row.get("step", row.get("trainer/global_step", row.get("_step")))
        if step in (None, ""):
            continue
        for key in LOSS_KEYS:
            value = row.get(key)
            if value not in (None, ""):
                curves[key].append((int(float(step)), float(value)))
    return {k: sorted(v) for k, v in curves.items() if v}


def _config_facts(config: dict[str, Any]) -> dict[str, Any]:
    """Study, model description, seed and items per step from a run's config (a plain dict)."""
    data, model = config.get("data") or {}, config.get("model") or {}
    batch, seq_len = data.get("batch_size"), (data.get("options") or {}).get("seq_len")
    items, item_name = None, "tokens"
    if isinstance(batch, int):
        items, item_name = (batch * seq_len, "tokens") if isinstance(seq_len, int) else (batch, "images")
    seed = config.get(SEED_KEY)
    described = " ".join(str(x) for x in (model.get("name"), model.get("size")) if x)
    if described and data.get("name"):
        described += f" on {data['name']}"
    study = config.get("study")
    return {"study": study if isinstance(study, str) and "${" not in study else "", "model": described,
            "seed": seed if isinstance(seed, int) else None, "items_per_step": items, "item_name": item_name}


def load_csv_runs(root: Path) -> list[Run]:
    """Runs under ``root`` (recursively) that have ``run_info.json`` and ``csv/metrics.csv``
    (``.hydra/config.yaml``, when present, gives the seed and the tokens per step)."""
    runs = []
    for info_path in sorted(Path(root).rglob("run_info.json")):
        run_dir = info_path.parent
        metrics = run_dir / "csv" / "metrics.csv"
        if not metrics.is_file():
            continue
        info = json.loads(info_path.read_text())
        config_path = run_dir / ".hydra" / "config.yaml"
        config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
        with metrics.open(newline="") as f:
            curves = _curves_from_rows(csv.DictReader(f))
        status = "diverged" if (run_dir / "DIVERGED").exists() else "finished"
        facts = _config_facts(config)
        facts["study"] = str(info.get("study") or facts["study"])  # resolved, unlike the saved config's
        if not facts["model"]:
            facts["model"] = " on ".join(str(info[k]) for k in ("model", "data") if info.get(k))
        runs.append(Run(run_dir.name, info["recipe"], list(info.get("overrides", [])), curves, status,
                        info.get("group", ""), **facts))
    return runs


def load_wandb_offline(root: Path) -> list[Run]:
    """Offline W&B runs (``offline-run-*`` folders under ``root``) via ``wandb leet inspect --json``
    (one JSON record per line; we read the ``run`` record's config and the ``history`` rows)."""
    runs = []
    for run_dir in sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir()):
        out = subprocess.run(["wandb", "leet", "inspect", "--json", str(run_dir)],
                             capture_output=True, text=True, check=True).stdout
        rows, run = [], {}
        for line in out.splitlines():
            record = json.loads(line)
            if record.get("type") == "run":
                run = record["run"]
            elif record.get("type") == "history":
                rows.append(record["history"].get("item", {}))
        config = run.get("config", {}).get("update", {})
        runs.append(_run_from_config(run_dir.name, config, rows, "finished", run.get("run_group", "")))
    return runs


def _run_from_config(name: str, config: dict, rows: Iterable[dict], status: str, group: str) -> Run:
    recipe = str((config.get("quant") or {}).get("name", "?"))
    return Run(name, recipe, list(config.get("overrides") or []), _curves_from_rows(rows), status, group,
               **_config_facts(config))


def load_wandb_group(path: str) -> list[Run]:
    """Runs of the online W&B group ``ENTITY/PROJECT/GROUP`` (full curves via ``scan_history``)."""
    import wandb

    parts = path.split("/")
    if len(parts) != 3:
        raise ValueError(f"expected wandb:ENTITY/PROJECT/GROUP, got wandb:{path}")
    entity, project, group = parts
    runs = []
    for r in wandb.Api().runs(f"{entity}/{project}", filters={"group": group}):
        rows = r.scan_history(keys=["trainer/global_step", *LOSS_KEYS])
        runs.append(_run_from_config(r.name, dict(r.config), rows, r.state, group))
    return runs


def load_runs(source: str) -> list[Run]:
    """Runs of ``source`` (module doc): CSV run folders first, then offline W&B, or ``wandb:...``."""
    if source.startswith("wandb:"):
        return load_wandb_group(source[len("wandb:"):])
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"{source} is not a directory (expected a multirun or run directory) nor wandb:ENTITY/PROJECT/GROUP")
    runs = load_csv_runs(root) or load_wandb_offline(root)
    if not runs:
        raise FileNotFoundError(
            f"no runs under {root}: expected run folders with run_info.json and csv/metrics.csv, "
            "or offline-run-* W&B folders"
        )
    return runs


# overrides that change where and how a run is launched, logged and saved, not what it computes
NOT_NUMERICS = ("launcher", "hydra.", "logger", "checkpoint.", "trainer.enable_progress_bar")


def _parse_overrides(overrides: list[str]) -> dict[str, str]:
    """``key=value`` overrides as a dict: those in ``NOT_NUMERICS`` left out, a ``+`` prefix and
    the case of booleans (Hydra's sweep records ``True``, a command line ``true``) ignored."""
    parsed = {}
    for o in overrides:
        key, sep, value = o.partition("=")
        key = key.lstrip("+")
        if sep and not any(key == n or key.startswith(n if n.endswith(".") else n + ".") for n in NOT_NUMERICS):
            parsed[key] = value.lower() if value.lower() in ("true", "false") else value
    return parsed


def _label(runs: list[Run]) -> None:
    """Label each run by the overrides that differ across the study (``quant`` first, as its bare
    value), ``seed`` and the overrides that do not change what a run computes (``NOT_NUMERICS``)
    left out (else by its recipe): the seeds of one recipe or ablation share a label."""
    parsed = [_parse_overrides(r.overrides) for r in runs]
    keys = sorted({k for p in parsed for k in p} - {SEED_KEY}, key=lambda k: (k != "quant", k))
    varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
    for run, p in zip(runs, parsed):
        run.label = " ".join(f"{k}={p[k]}" if k != "quant" else p[k] for k in varying if k in p) or run.recipe
        if run.seed is None and p.get(SEED_KEY, "").lstrip("-").isdigit():
            run.seed = int(p[SEED_KEY])


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by (label, recipe), in order of first appearance (labels set if unset)."""
    if any(not r.label for r in runs):
        _label(runs)
    groups: dict[tuple[str, str], Group] = {}
    for run in runs:
        groups.setdefault((run.label, run.recipe), Group(run.label, run.recipe, [])).runs.append(run)
    return list(groups.values())


def final_loss(run: Run) -> tuple[str, float]:
    """(metric, value): the last validation loss, else the mean of the last 10% of train losses."""
    if run.curves.get("val/loss"):
        return "val", run.curves["val/loss"][-1][1]
    train = run.curves.get("train/loss", [])
    if not train:
        return "-", math.nan
    tail = train[-max(1, len(train) // 10):]
    return "train", sum(v for _, v in tail) / len(tail)


def _baseline_group(groups: list[Group], baseline: str) -> Group | None:
    """The one group whose label, else recipe, is ``baseline`` and that has a finished run."""
    matches = [g for g in groups if g.label == baseline] or [g for g in groups if g.recipe == baseline]
    return matches[0] if len(matches) == 1 and matches[0].finished else None


def _paired_baseline(run: Run, base: Group) -> list[Run]:
    """The baseline's finished runs of ``run``'s seed, else all of them."""
    same_seed = [b for b in base.finished if run.seed is not None and b.seed == run.seed]
    return same_seed or base.finished


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def _steps(run: Run) -> int:
    """Optimizer steps the run logged: its last logged step + 1."""
    return max((s for c in run.curves.values() for s, _ in c), default=-1) + 1


def comparison_table(runs: list[Run], baseline: str = "bf16") -> str:
    """Markdown table, one row per group (``group_runs``): final loss (mean ± sd over its finished
    runs, or its runs when none finished) and relative gap to the ``baseline`` group, paired by
    seed (module doc); a run's loss counts only where its metric (val/train) is the baseline's."""
    groups = group_runs(runs)
    base = _baseline_group(groups, baseline)
    base_kinds = {final_loss(b)[0] for b in base.finished} if base else set()
    lines = [
        f"| run | recipe | steps | final loss | rel. gap to {baseline} | status |",
        "|---|---|---:|---:|---:|---|",
    ]
    seeded = False
    for g in groups:
        counted = g.finished or g.runs
        kinds = {final_loss(r)[0] for r in counted}
        kind = kinds.pop() if len(kinds) == 1 else "mixed"
        mean, sd = _mean_sd([final_loss(r)[1] for r in counted])
        n = len(counted)
        seeded |= n > 1
        loss = f"{mean:.4f} ({kind})" if n == 1 else f"{mean:.4f} ± {sd:.4f} ({kind}, n={n})"
        if g is base:
            gaps = [(final_loss(b)[1] - mean) / mean for b in counted]
            gap = "baseline" + (f" ±{statistics.stdev(gaps):.2%}" if n > 1 else "")
        elif base is None or not g.finished or base_kinds != {kind} or math.isnan(mean):
            gap = "n/a"
        else:
            gaps = []
            for r in counted:
                ref = statistics.fmean(final_loss(b)[1] for b in _paired_baseline(r, base))
                gaps.append((final_loss(r)[1] - ref) / ref)
            gap_mean, gap_sd = _mean_sd(gaps)
            gap = f"{gap_mean:+.2%}" + (f" ± {gap_sd:.2%}" if n > 1 else "")
        statuses = [r.status for r in g.runs]
        status = statuses[0] if len(set(statuses)) == 1 else ", ".join(
            f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
        lines.append(f"| {g.label} | {g.recipe} | {max(map(_steps, g.runs))} | {loss} | {gap} | {status} |")
    if base is None:
        lines += ["", f"(no single finished {baseline!r} run or seed group in this study: gaps are n/a)"]
    elif seeded:
        lines += ["", f"± is the sample sd over a row's n finished runs (seeds); a gap is taken against the "
                      f"{baseline} run of the same seed (else the {baseline} mean); {baseline}'s ± is its "
                      f"own spread, sd of (L − mean) / mean."]
    return "\n".join(lines)


def _smoothing_span(runs: list[Run]) -> int:
    """EMA span of the plotted training loss: 2% of the longest run's logged steps, at least 10."""
    longest = max((len(r.curves.get("train/loss", [])) for r in runs), default=0)
    return max(10, longest // 50)


def _curve(run: Run, key: str, span: int) -> dict[int, float]:
    """{step number (logged step + 1): value} of ``key``; training loss smoothed by an EMA of
    ``span`` steps (beta = 1 − 1/span)."""
    points = run.curves.get(key, [])
    values = [v for _, v in points]
    if key == "train/loss":
        values = _ema(values, 1 - 1 / span)
    return {s + 1: v for (s, _), v in zip(points, values)}


def _band(curves: list[dict[int, float]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """(steps common to all curves, mean, min, max) over the curves."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    columns = [[c[s] for c in curves] for s in steps]
    return steps, [statistics.fmean(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns]


# a distinct (line style, marker) per group, and lines drawn thinner one after another, so that
# groups with the same curve stay visible on top of each other
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _style(index: int, count: int) -> dict[str, Any]:
    return {"linestyle": LINE_STYLES[index % len(LINE_STYLES)], "marker": MARKERS[index % len(MARKERS)],
            "linewidth": 2.8 - 1.8 * index / max(count - 1, 1), "markersize": 7 - 3 * index / max(count - 1, 1),
            "markerfacecolor": "none", "color": f"C{index % 10}"}


def _title(runs: list[Run]) -> str:
    studies = sorted({r.study for r in runs if r.study}) or ["?"]
    models = sorted({r.model for r in runs if r.model}) or ["model ?"]
    return f"study {', '.join(studies)}: {', '.join(models)}"


def _figure(panels: int, title: str) -> tuple[Figure, list]:
    """``panels`` axes side by side sharing x (steps or tokens), each with its own y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False, sharex=True)
    fig.suptitle(title)
    return fig, list(axes[0])


def _finish(fig: Figure, path: Path | None) -> Figure:
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    for text in fig.findobj(Text):  # labels are overrides and names: a `$` in them is no math
        text.set_parse_math(False)
    fig.tight_layout()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def plot_runs(runs: list[Run], path: Path | None = None) -> Figure:
    """Training (EMA-smoothed) and validation loss against optimizer step, each on its own y axis;
    one line per group (the mean of its seeds, with their min–max band); val points at the step
    after which they were measured. Saved to ``path`` when given; returns the Figure."""
    from matplotlib.ticker import MaxNLocator

    groups = group_runs(runs)
    span = _smoothing_span(runs)
    fig, axes = _figure(2, _title(runs))
    for ax, key in zip(axes, LOSS_KEYS):
        for i, g in enumerate(groups):
            curves = [c for c in (_curve(r, key, span) for r in g.runs) if c]
            steps, mean, low, high = _band(curves)
            if not steps:
                continue
            style = _style(i, len(groups))
            if key == "train/loss":
                style["markevery"] = max(1, len(steps) // 8)
            label = g.label + (f" (n={len(curves)})" if len(curves) > 1 else "")
            ax.plot(steps, mean, label=label, **style)
            if len(curves) > 1:
                ax.fill_between(steps, low, high, color=style["color"], alpha=0.15, linewidth=0)
        ax.set_title(f"training loss (EMA over {span} steps)" if key == "train/loss" else "validation loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return _finish(fig, path)


def _gap_curves(g: Group, base: Group, key: str, span: int) -> list[dict[int, float]]:
    """Per run of ``g``: {step: (L − L_base) / L_base}, against the paired baseline (mean)."""
    out = []
    for run in g.finished if g is not base else base.finished:
        refs = [_curve(b, key, span) for b in (base.finished if g is base else _paired_baseline(run, base))]
        steps, ref, _, _ = _band(refs)
        ref_at = dict(zip(steps, ref))
        curve = _curve(run, key, span)
        gap = {s: (v - ref_at[s]) / ref_at[s] for s, v in curve.items() if s in ref_at}
        if gap:
            out.append(gap)
    return out


def plot_gaps(runs: list[Run], baseline: str = "bf16", path: Path | None = None) -> Figure | None:
    """The relative loss gap to the baseline, (L − L_bf16) / L_bf16, against tokens seen (the
    NVFP4 paper's figure style, arXiv 2509.25149 §4): per group the mean over its finished seeds
    (each against the baseline run of its seed) and their min–max band, the baseline's own seed
    spread as a grey band around 0; training loss EMA-smoothed, validation at its steps. Saved to
    ``path`` when given; None when the study has no baseline group or nothing to compare with it."""
    from matplotlib.ticker import EngFormatter, MaxNLocator, PercentFormatter

    groups = group_runs(runs)
    base = _baseline_group(groups, baseline)
    others = [g for g in groups if g is not base and g.finished]
    if base is None or not others:
        return None
    span = _smoothing_span(runs)
    per_step = {r.items_per_step for g in [base, *others] for r in g.finished}
    items = per_step.pop() if len(per_step) == 1 else None
    item_name = base.finished[0].item_name
    keys = [k for k in LOSS_KEYS if any(r.curves.get(k) for r in base.finished)]
    fig, axes = _figure(len(keys), f"{_title(runs)}: loss relative to {base.label}")
    for ax, key in zip(axes, keys):
        scale = items or 1
        spread = _gap_curves(base, base, key, span)
        if len(spread) > 1:
            steps, _, low, high = _band(spread)
            ax.fill_between([s * scale for s in steps], low, high, color="0.5", alpha=0.3, linewidth=0,
                            label=f"{base.label} seed spread (n={len(spread)})")
        for i, g in enumerate(groups):
            if g not in others:
                continue
            gaps = _gap_curves(g, base, key, span)
            steps, mean, low, high = _band(gaps)
            if not steps:
                continue
            style = _style(i, len(groups))  # as in plot_runs: a group looks the same in both figures
            if key == "train/loss":
                style["markevery"] = max(1, len(steps) // 8)
            x = [s * scale for s in steps]
            n = len(gaps)
            ax.plot(x, mean, label=g.label + (f" (n={n})" if n > 1 else ""), **style)
            if n > 1:
                ax.fill_between(x, low, high, color=style["color"], alpha=0.15, linewidth=0)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"training loss (EMA over {span} steps)" if key == "train/loss" else "validation loss")
        ax.set_ylabel(f"({key} − {base.label}) / {base.label}")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        if items:
            ax.set_xlabel(f"{item_name} (step × {items:,})")
            ax.xaxis.set_major_formatter(EngFormatter())
        else:
            ax.set_xlabel("optimizer step (runs differ in, or do not record, items per step)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if ax.lines or ax.collections:
            ax.legend(fontsize="small")
    return _finish(fig, path)


def _ema(values: Iterable[float], beta: float = 0.9) -> list[float]:
    out, avg = [], None
    for v in values:
        avg = v if avg is None else beta * avg + (1 - beta) * v
        out.append(avg)
    return out


def write_report(runs: list[Run], out_dir: Path, baseline: str = "bf16") -> tuple[str, list[Path]]:
    """Write ``comparison.md``, ``comparison.png`` and (with a baseline) ``comparison_gap.png``
    into ``out_dir``; returns (table, paths of the plots)."""
    _label(runs)
    table = comparison_table(runs, baseline)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{REPORT_STEM}.md").write_text(table + "\n")
    plots = [out_dir / f"{REPORT_STEM}.png"]
    plot_runs(runs, plots[0])
    if plot_gaps(runs, baseline, out_dir / f"{REPORT_STEM}_gap.png") is not None:
        plots.append(out_dir / f"{REPORT_STEM}_gap.png")
    return table, plots


class MultirunReport(Callback):
    """Hydra callback: when a multirun ends, write and print the report of its sweep directory."""

    def __init__(self, baseline: str = "bf16") -> None:
        self.baseline = baseline

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = load_csv_runs(sweep_dir)
        if not runs:
            return
        table, plots = write_report(runs, sweep_dir, self.baseline)
        print(f"\n{table}\n\n" + "".join(f"plot: {p}\n" for p in plots)
              + f"table: {sweep_dir / (REPORT_STEM + '.md')}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fp4train-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", metavar="source",
                        help="multirun/run directory, offline W&B directory, or wandb:ENTITY/PROJECT/GROUP; "
                             "several sources make one study")
    parser.add_argument("--out", help="where to write comparison.md/.png (default: the source directory, or "
                                      "the current one for wandb:...; required with several sources)")
    parser.add_argument("--baseline", default="bf16", help="label or recipe name of the baseline (default bf16)")
    args = parser.parse_args(argv)
    if args.out is None and len(args.sources) > 1:
        parser.error(f"several sources {args.sources}: give --out DIR for the report")
    try:
        runs = [run for source in args.sources for run in load_runs(source)]
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"fp4train-compare: {e}")
    source = Path(args.sources[0])
    table, plots = write_report(runs, Path(args.out or (source if source.is_dir() else ".")), args.baseline)
    print(table + "\n\n" + "\n".join(f"plot: {p}" for p in plots))


if __name__ == "__main__":
    main()
