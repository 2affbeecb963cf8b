"""Eager against CUDA-graph training through the real entry point (``trainer.cuda_graph``).

    PYTHONUNBUFFERED=1 python -m experiments.bench.graph_e2e --out DIR [--cases NAME ...] [--runs DIR]

Per case: ``python -m fp4train.train`` twice with the same overrides (``logger=csv``), once eager
and once with ``trainer.cuda_graph=true``; then from each run's CSV log the steps whose training
loss is equal in both, and the median throughput of each. Writes ``graph_e2e.json`` and
``graph_e2e.md`` to ``--out`` (the runs' own folders go under ``--runs``, default ``--out/runs``).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

CASES = {  # name: overrides
    "vit_qema": ["recipe=tetrajet_vit", "quant=tetrajet_qema", "trainer.max_steps=30"],
    "vit_qramping": ["recipe=tetrajet_vit", "quant=tetrajet_qramping", "quant.methods.tetrajet.ramping_every_n_steps=10",
                     "quant.methods.tetrajet.ramping_calib_steps=5", "trainer.max_steps=20"],
    "vit_mxfp4_accumulate2": ["recipe=tetrajet_vit", "quant=mxfp4", "trainer.accumulate_grad_batches=2",
                                        "trainer.max_steps=10"],
    "lm_nvfp4_switch": ["recipe=nvfp4_hybrid_lm", "precision_schedule.switch_at=0.5", "trainer.max_steps=40"],
}
COMMON = ["trainer.val_every_n_steps=15", "logger=csv", "trainer.enable_progress_bar=false", "checkpoint.every_n_steps=0"]


def run(overrides: list[str], graphed: bool, out: Path) -> dict[str, list[float]]:
    """One training run; its logged training losses and throughputs (``*_per_s``) by step."""
    cmd = [sys.executable, "-m", "fp4train.train", *overrides, *COMMON,
           f"trainer.cuda_graph={str(graphed).lower()}", f"hydra.run.dir={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    rows = list(csv.DictReader(open(out / "csv" / "metrics.csv")))
    loss = {r["step"]: float(r["train/loss"]) for r in rows if r.get("train/loss")}
    speed = [float(v) for r in rows for k, v in r.items() if k.endswith("_per_s") and v]
    return {"loss": loss, "speed": speed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--runs", type=Path, help="folder for the runs' outputs (default: OUT/runs)")
    args = parser.parse_args()
    runs = args.runs or args.out / "runs"
    rows = []
    for name in args.cases:
        eager, graphed = (run(CASES[name], g, runs / f"{name}_{g}") for g in (False, True))
        equal = sum(eager["loss"][s] == graphed["loss"].get(s) for s in eager["loss"])
        rows.append({"case": name, "steps": len(eager["loss"]), "equal_steps": equal,
                     "eager_items_per_s": statistics.median(eager["speed"]),
                     "graphed_items_per_s": statistics.median(graphed["speed"]),
                     "eager_last_loss": list(eager["loss"].values())[-1],
                     "graphed_last_loss": list(graphed["loss"].values())[-1]})
        print(json.dumps(rows[-1]), flush=True)
    device = torch.cuda.get_device_name()
    lines = [f"Eager vs CUDA-graph training through `python -m fp4train.train` on {device} (torch {torch.__version__}).", "",
             "| case | steps with equal loss | items/s eager | items/s graphed | last loss eager / graphed |", "|---|---|---:|---:|---|"]
    lines += [f"| {r['case']} | {r['equal_steps']} of {r['steps']} | {r['eager_items_per_s']:,.0f} | "
              f"{r['graphed_items_per_s']:,.0f} | {r['eager_last_loss']:.6f} / {r['graphed_last_loss']:.6f} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "graph_e2e.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=1))
    (args.out / "graph_e2e.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
