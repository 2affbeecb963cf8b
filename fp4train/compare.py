"""Compare the runs of a study: a Markdown table of final losses with their relative gap to the
BF16 baseline, a PNG of the loss curves, and a PNG of the relative loss gap over tokens; on request
a table and a PNG of further logged metrics, and the share of a reference recipe's gap that each
other recipe closes.

``python -m fp4train.compare SOURCE [SOURCE ...] [--out DIR] [--baseline bf16] [--metrics KEY ...]
[--closure REF] [--at-step N]``; each SOURCE is, in order of preference:

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

``--metrics KEY ...`` (e.g. ``val/acc osc/mean/oscillation_ratio``) adds ``comparison_metrics.md``:
per group each metric's final logged value, mean ± sample sd over the group's finished runs that
logged it (n), and for a metric whose name ends in ``acc`` its difference to the baseline in
percentage points, paired by seed as the loss gap is; and ``comparison_metrics.png``: one panel per
metric against optimizer step, per group the mean over seeds with their min–max band.

``--closure REF`` (e.g. ``mxfp4``) adds ``comparison_closure.md``: for every group g other than the
baseline and REF, ``closure = (L_REF − L_g) / (L_REF − L_base)`` of the groups' mean final losses
(1: g matches the baseline, 0: g is no better than REF), with a 90% bootstrap interval (each group's
seeds resampled with replacement, independently, 2000 times, from a fixed numpy seed); the same for
every ``--metrics`` key that ends in ``acc``. When REF's gap is within the seed spread
(sd_base + sd_REF) the table says that the closure is not meaningful.

A run whose log stops short of its config's ``trainer.max_steps`` (a time limit, a crash) is
"incomplete": listed, but given no gap. ``--at-step N`` compares every run as it
stood after N optimizer steps (``at_step``), so runs stopped early can still be compared at equal
steps.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Group", "MultirunReport", "Run", "at_step", "closure_table", "comparison_table", "final_loss", "final_value",
    "gap_closure", "group_runs", "load_csv_runs", "load_runs", "load_wandb_group", "load_wandb_offline", "main",
    "metrics_table", "plot_gaps", "plot_metrics", "plot_runs", "write_report",
]

LOSS_KEYS = ("train/loss", "val/loss")
REPORT_STEM = "comparison"
SEED_KEY = "seed"
# columns of a log that are the step, not a metric
STEP_KEYS = ("step", "epoch", "trainer/global_step", "_step", "_runtime", "_timestamp")
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CLOSURE_LEVEL = 0.90


@dataclass
class Run:
    """One run's loss curves (and the metrics asked for): ``curves[metric]`` is a list of (logged
    step, value), where logged step s belongs to the (s+1)-th optimizer step (Lightning logs the
    validation after k steps at k − 1). ``items_per_step``: tokens (``item_name``) or images of one
    optimizer step. ``logged``: every metric name the run's log holds, kept or not (for errors)."""

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
    logged: list[str] = field(default_factory=list)


@dataclass
class Group:
    """The runs of one label (one recipe or ablation, its seeds)."""

    label: str
    recipe: str
    runs: list[Run]

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status == "finished"]


def _curves_from_rows(rows: Iterable[dict[str, Any]], keys: Iterable[str] = LOSS_KEYS
                      ) -> dict[str, list[tuple[int, float]]]:
    """{key: [(logged step, value), ...] sorted} of the ``keys`` that the rows hold a value of."""
    curves: dict[str, list[tuple[int, float]]] = {k: [] for k in keys}
    for row in rows:
        step = row.get("step", row.get("trainer/global_step", row.get("_step")))
        if step in (None, ""):
            continue
        for key in curves:
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


def _metric_names(keys: Iterable[str]) -> list[str]:
    """The metric names among a log's column or row keys, in order, without the step columns."""
    return [k for k in dict.fromkeys(keys) if k not in STEP_KEYS and not k.startswith("_")]


def _steps(run: Run) -> int:
    """Optimizer steps the run logged: its last logged step + 1."""
    return max((s for c in run.curves.values() for s, _ in c), default=-1) + 1


def _completion(run: Run, config: dict[str, Any]) -> str:
    """"finished", or "incomplete" when the config's ``trainer.max_steps`` is known and the run's
    log stops short of it by more than one logging interval (``trainer.log_every_n_steps``, default
    1): a run stopped by a time limit or a crash, whose last values are not its final ones."""
    trainer = config.get("trainer") or {}
    max_steps, every = trainer.get("max_steps"), trainer.get("log_every_n_steps", 1)
    if isinstance(max_steps, int) and max_steps > 0 and isinstance(every, int) and _steps(run) + every - 1 < max_steps:
        return "incomplete"
    return "finished"


def at_step(runs: list[Run], step: int) -> list[Run]:
    """The runs as they stood after ``step`` optimizer steps (equal-steps comparison of runs of
    which some stopped early): each curve cut to logged steps < ``step``; a run logged through step
    ``step`` − 1 counts as finished there (a diverged run stays diverged), one that stops short is
    "incomplete"."""
    if step < 1:
        raise ValueError(f"at_step needs a step >= 1, got {step}")
    out = []
    for run in runs:
        curves = {k: [(s, v) for s, v in c if s < step] for k, c in run.curves.items()}
        status = run.status if run.status == "diverged" else ("finished" if _steps(run) >= step else "incomplete")
        out.append(replace(run, curves={k: c for k, c in curves.items() if c}, status=status))
    return out


def load_csv_runs(root: Path, metrics: Sequence[str] = ()) -> list[Run]:
    """Runs under ``root`` (recursively) that have ``run_info.json`` and ``csv/metrics.csv``
    (``.hydra/config.yaml``, when present, gives the seed and the tokens per step); their loss
    curves and those of the columns ``metrics``."""
    runs = []
    for info_path in sorted(Path(root).rglob("run_info.json")):
        run_dir = info_path.parent
        metrics_csv = run_dir / "csv" / "metrics.csv"
        if not metrics_csv.is_file():
            continue
        info = json.loads(info_path.read_text())
        config_path = run_dir / ".hydra" / "config.yaml"
        config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
        with metrics_csv.open(newline="") as f:
            reader = csv.DictReader(f)
            curves = _curves_from_rows(reader, (*LOSS_KEYS, *metrics))
            logged = _metric_names(reader.fieldnames or [])
        facts = _config_facts(config)
        facts["study"] = str(info.get("study") or facts["study"])  # resolved, unlike the saved config's
        if not facts["model"]:
            facts["model"] = " on ".join(str(info[k]) for k in ("model", "data") if info.get(k))
        run = Run(run_dir.name, info["recipe"], list(info.get("overrides", [])), curves, "finished",
                  info.get("group", ""), **facts, logged=logged)
        run.status = "diverged" if (run_dir / "DIVERGED").exists() else _completion(run, config)
        runs.append(run)
    return runs


def load_wandb_offline(root: Path, metrics: Sequence[str] = ()) -> list[Run]:
    """Offline W&B runs (``offline-run-*`` folders under ``root``) via ``wandb leet inspect --json``
    (one JSON record per line; we read the ``run`` record's config and the ``history`` rows); their
    loss curves and those of the keys ``metrics``."""
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
        loaded = _run_from_config(run_dir.name, config, _curves_from_rows(rows, (*LOSS_KEYS, *metrics)),
                                  "finished", run.get("run_group", ""), _metric_names(k for r in rows for k in r))
        loaded.status = _completion(loaded, config)
        runs.append(loaded)
    return runs


def _run_from_config(name: str, config: dict, curves: dict[str, list[tuple[int, float]]], status: str,
                     group: str, logged: list[str]) -> Run:
    recipe = str((config.get("quant") or {}).get("name", "?"))
    return Run(name, recipe, list(config.get("overrides") or []), curves, status, group,
               **_config_facts(config), logged=logged)


def load_wandb_group(path: str, metrics: Sequence[str] = ()) -> list[Run]:
    """Runs of the online W&B group ``ENTITY/PROJECT/GROUP`` (full curves via ``scan_history``):
    the losses and ``metrics``, one scan per key, since a scan with several keys returns only the
    rows that hold all of them (W&B's doc), and validation, training and ``osc/*`` values are logged
    in rows of their own. ``logged``: the keys of the run's summary."""
    import wandb

    parts = path.split("/")
    if len(parts) != 3:
        raise ValueError(f"expected wandb:ENTITY/PROJECT/GROUP, got wandb:{path}")
    entity, project, group = parts
    runs = []
    for r in wandb.Api().runs(f"{entity}/{project}", filters={"group": group}):
        curves: dict[str, list[tuple[int, float]]] = {}
        for key in (*LOSS_KEYS, *metrics):
            curves.update(_curves_from_rows(r.scan_history(keys=["trainer/global_step", key]), (key,)))
        summary = getattr(r, "summary", None)
        logged = _metric_names(summary.keys()) if summary is not None else []
        runs.append(_run_from_config(r.name, dict(r.config), curves, r.state, group, logged))
    return runs


def load_runs(source: str, metrics: Sequence[str] = ()) -> list[Run]:
    """Runs of ``source`` (module doc): CSV run folders first, then offline W&B, or ``wandb:...``;
    each with its loss curves and those of ``metrics``."""
    if source.startswith("wandb:"):
        return load_wandb_group(source[len("wandb:"):], metrics)
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"{source} is not a directory (expected a multirun or run directory) nor wandb:ENTITY/PROJECT/GROUP")
    runs = load_csv_runs(root, metrics) or load_wandb_offline(root, metrics)
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


def final_value(run: Run, key: str) -> float | None:
    """The last logged value of ``key`` (at the highest logged step), None when the run has none."""
    points = run.curves.get(key)
    return points[-1][1] if points else None


def _check_metrics(runs: list[Run], metrics: Sequence[str]) -> None:
    """ValueError naming each metric of ``metrics`` that no run logged, and the keys that exist:
    the first 20 of the runs' logs (those of the first run first; a baseline may lack a quantized
    recipe's keys)."""
    missing = [m for m in metrics if not any(r.curves.get(m) for r in runs)]
    if missing:
        logged = list(dict.fromkeys(k for r in runs for k in r.logged))
        shown = ", ".join(logged[:20]) + (f", … ({len(logged)} in all)" if len(logged) > 20 else "")
        raise ValueError(f"no run logged {', '.join(map(repr, missing))}; "
                         + (f"the runs logged: {shown}" if logged else "the runs' logged keys are unknown"))


def _logged_values(runs: list[Run], key: str) -> list[tuple[Run, float]]:
    """(run, ``final_value``) of the runs that logged ``key``."""
    return [(r, v) for r in runs for v in [final_value(r, key)] if v is not None]


def _is_accuracy(key: str) -> bool:
    return key.endswith("acc")


def _point_scale(values: Iterable[float]) -> float:
    """Percentage points per unit of an accuracy: 100 when its values are fractions (all in
    [0, 1], as fp4train logs ``val/acc``), 1 when some value exceeds 1 (already in percent)."""
    finite = [v for v in values if math.isfinite(v)]
    return 100.0 if all(0 <= v <= 1 for v in finite) else 1.0


def _decimals(x: float) -> int:
    """Decimals that show 4 significant digits of ``x`` (4 for 0 or a non-finite x, at most 8)."""
    if not math.isfinite(x) or x == 0:
        return 4
    return min(8, max(0, 3 - math.floor(math.log10(abs(x)))))


def _fmt(mean: float, sd: float, n: int, decimals: int | None = None) -> str:
    """``mean ± sd (n=N)`` (``mean (n=1)``), both to the decimals of the mean's 4 significant digits."""
    d = _decimals(mean) if decimals is None else decimals
    return f"{mean:.{d}f} (n=1)" if n == 1 else f"{mean:.{d}f} ± {sd:.{d}f} (n={n})"


def metrics_table(runs: list[Run], metrics: Sequence[str], baseline: str = "bf16") -> str:
    """Markdown table, one row per group (as ``comparison_table``): for each metric its final
    logged value (``final_value``), mean ± sample sd over the group's finished runs that logged it
    (n); for a metric whose name ends in ``acc`` also Δ = A − A_base in percentage points (×100
    for fractions, ``_point_scale``), each run against the mean of the baseline's finished runs of
    its seed (else of all of them), as mean ± sd over the group's runs. Raises ValueError for a
    metric no run logged."""
    _check_metrics(runs, metrics)
    groups = group_runs(runs)
    base = _baseline_group(groups, baseline)
    header, align = ["run", "recipe"], ["---", "---"]
    for key in metrics:
        header.append(key)
        align.append("---:")
        if _is_accuracy(key):
            header.append(f"Δ {key} to {baseline} (points)")
            align.append("---:")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    scales = {k: _point_scale(v for _, v in _logged_values([r for r in runs if r.status == "finished"], k))
              for k in metrics}
    for g in groups:
        cells = [g.label, g.recipe]
        for key in metrics:
            pairs = _logged_values(g.finished, key)
            if not g.finished:
                cells.append("n/a (none finished)")
            elif not pairs:
                cells.append("not logged")
            else:
                cells.append(_fmt(*_mean_sd([v for _, v in pairs]), len(pairs)))
            if not _is_accuracy(key):
                continue
            base_pairs = _logged_values(base.finished, key) if base else []
            if g is base:
                cells.append("baseline")
            elif not pairs or not base_pairs:
                cells.append("n/a")
            else:
                deltas = []
                for run, value in pairs:
                    paired = _paired_baseline(run, base)
                    refs = [v for b, v in base_pairs if any(b is p for p in paired)] or [v for _, v in base_pairs]
                    deltas.append((value - statistics.fmean(refs)) * scales[key])
                mean, sd = _mean_sd(deltas)
                cells.append(f"{mean:+.2f}" if len(deltas) == 1 else f"{mean:+.2f} ± {sd:.2f} (n={len(deltas)})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Each metric's last logged value, mean ± sample sd over a row's finished runs that logged it (n)."]
    if any(map(_is_accuracy, metrics)):
        lines.append(f"Δ: difference to {baseline} in percentage points, each run against the {baseline} run of the "
                     f"same seed (else the {baseline} mean), mean ± sd over the row's runs."
                     + ("" if base else f" No single finished {baseline!r} group in this study: Δ is n/a."))
    return "\n".join(lines)


def gap_closure(base: Sequence[float], ref: Sequence[float], group: Sequence[float],
                resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = CLOSURE_LEVEL,
                ) -> tuple[float, float, float, float]:
    """Share of the reference's gap to the baseline that a group closes, from per-seed final values:
    ``c = (mean(ref) − mean(group)) / (mean(ref) − mean(base))`` (1: the group matches the baseline,
    0: it is no better than the reference; the same formula for a loss and an accuracy). Returns
    (c, low, high, reversed): [low, high] the central ``level`` interval (percentiles 5 and 95 for
    0.90, numpy's linear interpolation) of c over ``resamples`` bootstrap resamples, in each of
    which base, ref and group are resampled with replacement independently, each to its own size,
    with ``numpy.random.default_rng(seed)`` (reproducible); resamples where ref's and base's means
    coincide (c undefined) are left out of the percentiles; ``reversed``: the fraction of resamples
    whose reference gap has the opposite sign to the observed one, or is 0 (1 when the observed
    gap is 0, and c is then nan)."""
    arrays = [np.asarray(v, dtype=float) for v in (base, ref, group)]
    if any(a.size == 0 for a in arrays):
        raise ValueError("gap_closure needs at least one value per group")
    b, r, g = (float(a.mean()) for a in arrays)
    closure = (r - g) / (r - b) if r != b else math.nan
    rng = np.random.default_rng(seed)
    mb, mr, mg = (a[rng.integers(0, a.size, size=(resamples, a.size))].mean(axis=1) for a in arrays)
    gap = mr - mb
    with np.errstate(divide="ignore", invalid="ignore"):
        closures = np.where(gap != 0, (mr - mg) / np.where(gap != 0, gap, 1.0), np.nan)
    tail = (1 - level) / 2 * 100
    low, high = (np.nanpercentile(closures, [tail, 100 - tail]) if np.isfinite(closures).any()
                 else (math.nan, math.nan))
    flipped = float(np.mean(np.sign(gap) != np.sign(r - b))) if r != b else 1.0
    return float(closure), float(low), float(high), flipped


def _named_group(groups: list[Group], name: str, what: str) -> Group:
    """The one group whose label, else recipe, is ``name`` and that has a finished run (else a
    ValueError naming ``what`` and the labels there are)."""
    found = _baseline_group(groups, name)
    if found is None:
        raise ValueError(f"{what} {name!r} is not one group (label or recipe) with a finished run; "
                         f"groups: {', '.join(repr(g.label) for g in groups)}")
    return found


def closure_table(runs: list[Run], ref: str, baseline: str = "bf16", metric: str | None = None,
                  resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = CLOSURE_LEVEL
                  ) -> str:
    """Markdown section: for each group g other than the ``baseline`` and ``ref`` groups (label,
    else recipe), ``closure = (V_ref − V_g) / (V_ref − V_base)`` with V a group's mean over its
    finished runs of ``final_loss`` (``metric`` None; the table's final loss, which must be of one
    kind, val or train, in the three groups) or of ``final_value(run, metric)``, and its bootstrap
    interval (``gap_closure``). Says in the table when the reference's gap |V_ref − V_base| is
    within the seed spread sd_base + sd_ref (sample sds of the per-run values), or when the
    reference is not worse than the baseline (higher is better for a metric ending in ``acc``,
    lower for a loss or any other metric): the closure is then not meaningful. Raises
    ValueError when the baseline or ``ref`` is not one group with a finished run."""
    groups = group_runs(runs)
    base = _named_group(groups, baseline, "baseline")
    reference = _named_group(groups, ref, "closure reference")
    if reference is base:
        raise ValueError(f"the closure reference {ref!r} is the baseline")

    def values(g: Group) -> tuple[list[float], set[str]]:
        if metric is None:
            pairs = [final_loss(r) for r in g.finished]
            return [v for _, v in pairs], {k for k, _ in pairs}
        return [v for _, v in _logged_values(g.finished, metric)], {metric}

    name = "final loss" if metric is None else metric
    higher_is_better = metric is not None and _is_accuracy(metric)
    (vb, kb), (vr, kr) = values(base), values(reference)
    sym = "L" if metric is None else "A"
    title = f"### Share of {reference.label}'s {name} gap to {base.label} closed"
    formula = (f"closure = ({sym}_{reference.label} − {sym}) / ({sym}_{reference.label} − {sym}_{base.label}), "
               f"{sym} a row's mean {name} over its finished runs; 100% matches {base.label}, "
               f"0% is no better than {reference.label}, < 0 worse.")
    if not vb or not vr or len(kb | kr) != 1 or any(math.isnan(v) for v in vb + vr):
        return "\n".join([title, "", formula, "",
                          f"n/a: {base.label} and {reference.label} need finished runs with a {name} "
                          f"(of one kind, val or train, in both)."])
    kind = next(iter(kb))
    mb, sb = _mean_sd(vb)
    mr, sr = _mean_sd(vr)
    gap, spread = mr - mb, sb + sr
    d = 4 if metric is None else _decimals(mb)  # the loss table's 4 decimals for a loss
    worse = gap < 0 if higher_is_better else gap > 0
    if not worse:
        verdict = f"{reference.label} is not worse than {base.label}: there is no gap to close"
    elif math.isnan(spread):
        verdict = f"one seed in {base.label} or {reference.label}: no seed spread to judge the gap against"
    elif abs(gap) <= spread:
        verdict = f"{reference.label}'s gap is within the seed spread: the closure is not meaningful"
    else:
        verdict = ""
    pct = 100 * (1 - level)
    lines = [
        title, "",
        formula,
        f"{reference.label}'s gap: {mr:.{d}f} − {mb:.{d}f} = {gap:+.{d}f} ({kind if metric is None else name}, "
        f"n={len(vr)} and {len(vb)}); seed spread sd_{base.label} + sd_{reference.label} = "
        + (f"{spread:.{d}f}." if math.isfinite(spread) else "n/a.")
        + (f" **Note: {verdict}.**" if verdict else ""),
        "",
        f"| run | recipe | {name} | closure | {level:.0%} bootstrap interval | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    for g in groups:
        if g is base or g is reference:
            continue
        vg, kg = values(g)
        if not vg:
            lines.append(f"| {g.label} | {g.recipe} | n/a | n/a | n/a | no finished run with a {name} |")
            continue
        mg, sg = _mean_sd(vg)
        value = _fmt(mg, sg, len(vg), d)
        if kg != kb:
            lines.append(f"| {g.label} | {g.recipe} | {value} | n/a | n/a | final loss not of kind {kind} |")
            continue
        c, low, high, flipped = gap_closure(vb, vr, vg, resamples, seed, level)
        notes = [verdict] if verdict else []
        if flipped > 0 and worse:
            notes.append(f"{reference.label}'s gap vanishes or reverses in {flipped:.1%} of resamples")
        lines.append(f"| {g.label} | {g.recipe} | {value} | {c:.1%} | [{low:.1%}, {high:.1%}] | {'; '.join(notes)} |")
    lines += ["", f"Interval: percentiles {pct / 2:g} and {100 - pct / 2:g} of the closure over {resamples} bootstrap "
                  f"resamples, the finished runs (seeds) of {base.label}, {reference.label} and the row resampled "
                  f"with replacement, independently (numpy default_rng({seed}))."]
    return "\n".join(lines)


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


def _draw_groups(ax: Any, groups: list[Group], curves_of: Callable[[Group], list[dict[int, float]]],
                 thin_markers: bool, scale: int = 1) -> None:
    """One line per group on ``ax``: the mean of ``curves_of(group)`` ({step: value} per run) over
    the steps common to them, at x = step × ``scale``, with their min–max band when there are
    several; the group's ``_style`` by its index in ``groups`` (a group looks the same in every
    figure); about 8 markers per line when ``thin_markers``. Groups without a curve are skipped."""
    for i, g in enumerate(groups):
        curves = curves_of(g)
        steps, mean, low, high = _band(curves)
        if not steps:
            continue
        style = _style(i, len(groups))
        if thin_markers:
            style["markevery"] = max(1, len(steps) // 8)
        x = [s * scale for s in steps]
        n = len(curves)
        ax.plot(x, mean, label=g.label + (f" (n={n})" if n > 1 else ""), **style)
        if n > 1:
            ax.fill_between(x, low, high, color=style["color"], alpha=0.15, linewidth=0)


def _step_axes(ax: Any, key: str) -> None:
    """x: optimizer steps on integer ticks; y: ``key``; grid, and a legend when lines were drawn."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("optimizer step")
    ax.set_ylabel(key)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")


def plot_runs(runs: list[Run], path: Path | None = None) -> Figure:
    """Training (EMA-smoothed) and validation loss against optimizer step, each on its own y axis;
    one line per group (the mean of its seeds, with their min–max band); val points at the step
    after which they were measured. Saved to ``path`` when given; returns the Figure."""
    groups = group_runs(runs)
    span = _smoothing_span(runs)
    fig, axes = _figure(2, _title(runs))
    for ax, key in zip(axes, LOSS_KEYS):
        _draw_groups(ax, groups, lambda g: [c for c in (_curve(r, key, span) for r in g.runs) if c],
                     thin_markers=key == "train/loss")
        ax.set_title(f"training loss (EMA over {span} steps)" if key == "train/loss" else "validation loss")
        _step_axes(ax, key)
    return _finish(fig, path)


def plot_metrics(runs: list[Run], metrics: Sequence[str], path: Path | None = None) -> Figure:
    """One panel per logged metric in ``metrics`` against optimizer step (the value logged at step
    s drawn at s + 1, as the losses), each on its own y axis; one line per group, the mean of its
    runs (unsmoothed) with their min–max band, styled as in ``plot_runs``. Raises ValueError for a
    metric no run logged. Saved to ``path`` when given; returns the Figure."""
    if not metrics:
        raise ValueError("plot_metrics needs at least one metric")
    _check_metrics(runs, metrics)
    groups = group_runs(runs)
    span = _smoothing_span(runs)  # used only if train/loss is asked for
    fig, axes = _figure(len(metrics), _title(runs))
    for ax, key in zip(axes, metrics):
        _draw_groups(ax, groups, lambda g: [c for c in (_curve(r, key, span) for r in g.runs) if c],
                     thin_markers=True)
        ax.set_title(key)
        _step_axes(ax, key)
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
        _draw_groups(ax, groups, lambda g: _gap_curves(g, base, key, span) if g in others else [],
                     thin_markers=key == "train/loss", scale=scale)
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


def write_report(runs: list[Run], out_dir: Path, baseline: str = "bf16", metrics: Sequence[str] = (),
                 closure: str | None = None) -> tuple[str, list[Path]]:
    """Write ``comparison.md`` (the loss table), ``comparison.png`` and (with a baseline)
    ``comparison_gap.png`` into ``out_dir``; with ``metrics``, ``comparison_metrics.md``
    (``metrics_table``) and ``comparison_metrics.png`` (``plot_metrics``); with ``closure`` (a
    reference group), ``comparison_closure.md``: ``closure_table`` of the final loss and of each
    metric ending in ``acc``. Every table is made before anything is written, so a ValueError (a
    metric no run logged, an unknown group) leaves ``out_dir`` as it was. Returns (the tables as
    printed, the paths of the other files written, in order)."""
    _label(runs)
    table = comparison_table(runs, baseline)
    texts, extra = [table], []
    if metrics:
        texts.append(metrics_table(runs, metrics, baseline))
        extra.append((f"{REPORT_STEM}_metrics.md", texts[-1]))
    if closure is not None:
        sections = [closure_table(runs, closure, baseline)]
        sections += [closure_table(runs, closure, baseline, m) for m in metrics if _is_accuracy(m)]
        texts.append("\n\n".join(sections))
        extra.append((f"{REPORT_STEM}_closure.md", texts[-1]))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{REPORT_STEM}.md").write_text(table + "\n")
    files = [out_dir / f"{REPORT_STEM}.png"]
    plot_runs(runs, files[0])
    if plot_gaps(runs, baseline, out_dir / f"{REPORT_STEM}_gap.png") is not None:
        files.append(out_dir / f"{REPORT_STEM}_gap.png")
    for name, text in extra:
        files.append(out_dir / name)
        files[-1].write_text(text + "\n")
    if metrics:
        files.append(out_dir / f"{REPORT_STEM}_metrics.png")
        plot_metrics(runs, metrics, files[-1])
    return "\n\n".join(texts), files


def _file_lines(paths: list[Path]) -> str:
    return "\n".join(f"{'plot' if p.suffix == '.png' else 'table'}: {p}" for p in paths)


class MultirunReport(Callback):
    """Hydra callback: when a multirun ends, write and print the report of its sweep directory."""

    def __init__(self, baseline: str = "bf16") -> None:
        self.baseline = baseline

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = load_csv_runs(sweep_dir)
        if not runs:
            return
        table, files = write_report(runs, sweep_dir, self.baseline)
        print(f"\n{table}\n\n{_file_lines(files)}\ntable: {sweep_dir / (REPORT_STEM + '.md')}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fp4train-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", metavar="source",
                        help="multirun/run directory, offline W&B directory, or wandb:ENTITY/PROJECT/GROUP; "
                             "several sources make one study")
    parser.add_argument("--out", help="where to write comparison.md/.png (default: the source directory, or "
                                      "the current one for wandb:...; required with several sources)")
    parser.add_argument("--baseline", default="bf16", help="label or recipe name of the baseline (default bf16)")
    parser.add_argument("--metrics", nargs="+", default=[], metavar="KEY",
                        help="further logged metrics (e.g. val/acc osc/mean/oscillation_ratio): their final values "
                             "per group in comparison_metrics.md (for a KEY ending in acc also the difference to "
                             "the baseline in points) and their curves in comparison_metrics.png")
    parser.add_argument("--closure", metavar="REF",
                        help="label or recipe name of a reference group (e.g. mxfp4): the share of its final-loss "
                             "(and accuracy) gap to the baseline that each other group closes, with a 90%% "
                             "bootstrap interval, in comparison_closure.md")
    parser.add_argument("--at-step", type=int, metavar="N",
                        help="compare the runs as they stood after N optimizer steps (runs that stopped early; "
                             "those that did not reach N are left out as incomplete)")
    args = parser.parse_args(argv)
    args.metrics = list(dict.fromkeys(args.metrics))  # a key named twice is one column
    if args.out is None and len(args.sources) > 1:
        parser.error(f"several sources {args.sources}: give --out DIR for the report")
    source = Path(args.sources[0])
    try:
        runs = [run for src in args.sources for run in load_runs(src, args.metrics)]
        if args.at_step is not None:
            runs = at_step(runs, args.at_step)
        text, files = write_report(runs, Path(args.out or (source if source.is_dir() else ".")), args.baseline,
                                   args.metrics, args.closure)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"fp4train-compare: {e}")
    print(text + "\n\n" + _file_lines(files))


if __name__ == "__main__":
    main()
