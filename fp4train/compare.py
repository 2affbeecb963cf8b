"""Compare the runs of a study: a PNG of loss curves and a Markdown table of final losses with
their relative gap to the BF16 baseline.

``python -m fp4train.compare SOURCE [--out DIR] [--baseline bf16]`` where SOURCE is, in order
of preference:

* a directory holding run folders written by ``fp4train.train`` (a Hydra multirun directory, or
  any parent): each run's ``csv/metrics.csv`` and ``run_info.json`` are read;
* a directory of offline W&B runs (``offline-run-*`` folders), read through
  ``wandb leet inspect --json`` (W&B keeps no other readable copy offline);
* ``wandb:ENTITY/PROJECT/GROUP``: an online W&B group through ``wandb.Api`` and
  ``Run.scan_history`` (``history()`` would sample 500 points).

The gap is the NVFP4 paper's relative loss error (arXiv 2509.25149 §4):
``(L_recipe − L_bf16) / L_bf16`` of the final validation loss (the final training loss,
averaged over the last 10% of logged steps, when a run has no validation loss).
A Hydra multirun ends with this report through ``MultirunReport`` (conf/train.yaml).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

__all__ = [
    "MultirunReport", "Run", "comparison_table", "final_loss", "load_csv_runs", "load_runs",
    "load_wandb_group", "load_wandb_offline", "main", "plot_runs", "write_report",
]

LOSS_KEYS = ("train/loss", "val/loss")
REPORT_STEM = "comparison"


@dataclass
class Run:
    """One run's loss curves: ``curves[metric]`` is a list of (step, value)."""

    name: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    status: str = "finished"
    group: str = ""
    label: str = ""


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


def load_csv_runs(root: Path) -> list[Run]:
    """Runs under ``root`` (recursively) that have ``run_info.json`` and ``csv/metrics.csv``."""
    runs = []
    for info_path in sorted(Path(root).rglob("run_info.json")):
        run_dir = info_path.parent
        metrics = run_dir / "csv" / "metrics.csv"
        if not metrics.is_file():
            continue
        info = json.loads(info_path.read_text())
        with metrics.open(newline="") as f:
            curves = _curves_from_rows(csv.DictReader(f))
        status = "diverged" if (run_dir / "DIVERGED").exists() else "finished"
        runs.append(Run(run_dir.name, info["recipe"], list(info.get("overrides", [])), curves, status, info.get("group", "")))
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
    return Run(name, recipe, list(config.get("overrides") or []), _curves_from_rows(rows), status, group)


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


def _label(runs: list[Run]) -> None:
    """Label each run by the overrides that differ across the study (else by recipe and name)."""
    parsed = [dict(o.split("=", 1) for o in r.overrides if "=" in o) for r in runs]
    keys = sorted({k for p in parsed for k in p})
    varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
    for run, p in zip(runs, parsed):
        run.label = " ".join(f"{k}={p[k]}" if k != "quant" else p[k] for k in varying if k in p) or run.recipe
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for run in runs:
        if seen[run.label] > 1:
            run.label = f"{run.label} ({run.name})"


def final_loss(run: Run) -> tuple[str, float]:
    """(metric, value): the last validation loss, else the mean of the last 10% of train losses."""
    if run.curves.get("val/loss"):
        return "val", run.curves["val/loss"][-1][1]
    train = run.curves.get("train/loss", [])
    if not train:
        return "-", math.nan
    tail = train[-max(1, len(train) // 10):]
    return "train", sum(v for _, v in tail) / len(tail)


def comparison_table(runs: list[Run], baseline: str = "bf16") -> str:
    """Markdown table: final loss per run and relative gap to the ``baseline`` recipe's run."""
    if not runs[0].label:
        _label(runs)
    base = [r for r in runs if r.recipe == baseline and r.status == "finished"]
    base_kind, base_loss = final_loss(base[0]) if len(base) == 1 else ("-", math.nan)
    lines = [
        f"| run | recipe | steps | final loss | rel. gap to {baseline} | status |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in runs:
        kind, loss = final_loss(r)
        steps = max((s for c in r.curves.values() for s, _ in c), default=-1) + 1
        if r is (base[0] if len(base) == 1 else None):
            gap = "baseline"
        elif math.isnan(base_loss) or kind != base_kind or math.isnan(loss):
            gap = "n/a"
        else:
            gap = f"{(loss - base_loss) / base_loss:+.2%}"
        lines.append(f"| {r.label} | {r.recipe} | {steps} | {loss:.4f} ({kind}) | {gap} | {r.status} |")
    if len(base) != 1:
        lines.append("")
        lines.append(f"(no single finished {baseline!r} run in this study: gaps are n/a)")
    return "\n".join(lines)


def plot_runs(runs: list[Run], path: Path) -> Path:
    """Training (smoothed) and validation loss against step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs[0].label:
        _label(runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key in zip(axes, LOSS_KEYS):
        for r in runs:
            points = r.curves.get(key, [])
            if not points:
                continue
            steps, values = zip(*points)
            if key == "train/loss":
                values = _ema(values)
            ax.plot(steps, values, label=r.label, marker="o" if key == "val/loss" else None, markersize=3)
        ax.set_title(key + (" (EMA 0.9)" if key == "train/loss" else ""))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ema(values: Iterable[float], beta: float = 0.9) -> list[float]:
    out, avg = [], None
    for v in values:
        avg = v if avg is None else beta * avg + (1 - beta) * v
        out.append(avg)
    return out


def write_report(runs: list[Run], out_dir: Path, baseline: str = "bf16") -> tuple[str, Path]:
    """Write ``comparison.md`` and ``comparison.png`` into ``out_dir``; returns (table, plot path)."""
    _label(runs)
    table = comparison_table(runs, baseline)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{REPORT_STEM}.md").write_text(table + "\n")
    return table, plot_runs(runs, out_dir / f"{REPORT_STEM}.png")


class MultirunReport(Callback):
    """Hydra callback: when a multirun ends, write and print the report of its sweep directory."""

    def __init__(self, baseline: str = "bf16") -> None:
        self.baseline = baseline

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = load_csv_runs(sweep_dir)
        if not runs:
            return
        table, png = write_report(runs, sweep_dir, self.baseline)
        print(f"\n{table}\n\nplot: {png}\ntable: {sweep_dir / (REPORT_STEM + '.md')}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fp4train-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="multirun/run directory, offline W&B directory, or wandb:ENTITY/PROJECT/GROUP")
    parser.add_argument("--out", help="where to write comparison.md/.png (default: the source directory, or .)")
    parser.add_argument("--baseline", default="bf16", help="recipe name of the baseline (default bf16)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.source)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"fp4train-compare: {e}")
    out = Path(args.out or (args.source if Path(args.source).is_dir() else "."))
    table, png = write_report(runs, out, args.baseline)
    print(f"{table}\n\nplot: {png}")


if __name__ == "__main__":
    main()
