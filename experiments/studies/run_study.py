"""Run a study's every sweep side by side on the machine's GPUs, then its comparison report.

    python -m experiments.studies.run_study nvfp4_hybrid_lm --out experiments/studies/nvfp4_hybrid_lm/runs/DIR
    python -m experiments.studies.run_study tetrajet_vit_fashion_mnist --out DIR --dry-run

A study is a recipe and a list of sweeps (``STUDIES``): each sweep is one
``python -m fp4train.train -m recipe=<recipe> <overrides>`` with the parallel launcher
(``launcher=parallel``, ``hydra.launcher.jobs_per_gpu``: its jobs side by side on each GPU), CUDA
graphs, CSV logging and no checkpoints, written to ``OUT/<n>_<slug>``. All sweeps start at once, so
up to ``jobs per GPU × sweeps`` runs share each GPU (on one H200, 9 micro-LM runs side by side
finished in 161 s, about 2× the throughput of one at a time). When they have ended,
``fp4train.compare`` reads every sweep folder into one report, ``OUT/comparison.md`` and its plots:
one row per recipe or ablation, mean ± seed spread (with the study's extra metrics and gap closure
when every sweep ran; over sweeps run apart, call ``fp4train.compare`` on their folders).

``--dry-run`` prints the commands instead; ``--sweeps`` picks some by number; extra arguments
after ``--`` are appended to every sweep (e.g. ``-- trainer.max_steps=20`` for a smoke run).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["STUDIES", "Study", "sweep_commands", "main"]


@dataclass(frozen=True)
class Study:
    """``recipe``: the study's recipe (``recipes/<recipe>.yaml``); ``sweeps``: the overrides of each
    sweep (Hydra's sweep syntax: ``quant=bf16,nvfp4 seed=0,1,2``); ``report``: extra arguments of
    its ``fp4train.compare`` report (``--metrics``, ``--closure``)."""

    recipe: str
    sweeps: tuple[tuple[str, ...], ...]
    report: tuple[str, ...] = ()


SEEDS = "seed=0,1,2"
STUDIES: dict[str, Study] = {
    # arXiv 2509.25149 §4-5: the full recipe and each ablation against bf16, with the paper's
    # other formats and Quartet (arXiv 2505.14669) beside it; seeds 0-2 for every row
    "nvfp4_hybrid_lm": Study("nvfp4_hybrid_lm", (
        ("quant=bf16,nvfp4,quartet", SEEDS),
        ("quant=fp8,mxfp8,mxfp4", SEEDS),
        ("quant=nvfp4", "quant.rht=false", SEEDS),
        ("quant=nvfp4", "quant.sr=false", SEEDS),
        ("quant=nvfp4", "quant.weight_2d=false", SEEDS),
        ("quant=nvfp4", "quant.bf16_first_blocks=0", "quant.bf16_last_blocks=0", SEEDS),
        ("quant=nvfp4", "precision_schedule.switch_at=0.82", SEEDS),
    )),
    # arXiv 2502.20853: plain MXFP4 and TetraJet's remedies against bf16; the report adds accuracy,
    # the oscillation metrics (§4) and the share of plain MXFP4's gap each remedy closes
    "tetrajet_vit_fashion_mnist": Study("tetrajet_vit_fashion_mnist", (
        ("quant=bf16,mxfp4,tetrajet", SEEDS),
        ("quant=tetrajet_qema,tetrajet_qramping", SEEDS),
    ), report=("--metrics", "val/acc", "osc/mean/oscillation_ratio", "osc/mean/oscillating_fraction",
               "--closure", "mxfp4")),
}
COMMON = ("trainer.cuda_graph=true", "logger=csv", "launcher=parallel", "checkpoint.every_n_steps=0",
          "checkpoint.save_last=false", "trainer.enable_progress_bar=false")


def _slug(overrides: tuple[str, ...]) -> str:
    """A folder name for a sweep: its overrides but the seeds, in letters, digits, '.', '_', '-'."""
    pairs = [o.partition("=") for o in overrides if not o.startswith("seed=")]
    words = [f"{key.split('.')[-1]}_{value}" for key, _, value in pairs]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(words)).strip("_")


def sweep_commands(study: str, out: Path, jobs_per_gpu: int, extra: list[str] = (), python: str = sys.executable,
                   only: list[int] | None = None) -> list[tuple[list[str], Path]]:
    """``[(argv, sweep folder)]`` of ``study``'s sweeps (all, or the numbers in ``only``)."""
    if study not in STUDIES:
        raise SystemExit(f"unknown study {study!r}; valid: {sorted(STUDIES)}")
    spec = STUDIES[study]
    numbers = range(len(spec.sweeps)) if only is None else only
    commands = []
    for n in numbers:
        if not 0 <= n < len(spec.sweeps):
            raise SystemExit(f"study {study!r} has sweeps 0-{len(spec.sweeps) - 1}, not {n}")
        folder = out / f"{n}_{_slug(spec.sweeps[n])}"
        argv = [python, "-m", "fp4train.train", "-m", f"recipe={spec.recipe}", *spec.sweeps[n], *COMMON,
                f"hydra.launcher.jobs_per_gpu={jobs_per_gpu}", *extra, f"hydra.sweep.dir={folder}"]
        commands.append((argv, folder))
    return commands


def main(argv: list[str] | None = None) -> None:
    args_in = sys.argv[1:] if argv is None else argv
    extra = args_in[args_in.index("--") + 1:] if "--" in args_in else []
    args_in = args_in[: args_in.index("--")] if "--" in args_in else args_in
    parser = argparse.ArgumentParser(description="Run a study's sweeps side by side, then its report.")
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--out", required=True, type=Path, help="the study's run folder (one subfolder per sweep)")
    parser.add_argument("--jobs-per-gpu", type=int, default=3, help="each sweep's runs side by side per GPU")
    parser.add_argument("--sweeps", type=int, nargs="+", help="sweep numbers to run (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(args_in)
    commands = sweep_commands(args.study, args.out, args.jobs_per_gpu, extra, only=args.sweeps)
    if args.dry_run:
        for argv, _ in commands:
            print(shlex.join(["python", *argv[1:]]))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    procs = []
    for argv, folder in commands:
        log = open(args.out / f"{folder.name}.log", "w")
        procs.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), folder, log))
        print(f"started {folder.name}: {shlex.join(argv[3:])}", flush=True)
    failed = []
    for proc, folder, log in procs:
        code = proc.wait()
        log.close()
        print(f"[{time.time() - start:.0f} s] {folder.name}: exit {code}", flush=True)
        if code:
            failed.append(folder.name)
    report = subprocess.run([sys.executable, "-m", "fp4train.compare", *[str(f) for _, f in commands],
                             "--out", str(args.out), *(STUDIES[args.study].report if args.sweeps is None else ())])
    if failed or report.returncode:
        raise SystemExit(f"sweeps that failed: {failed} (logs: {args.out}/<sweep>.log)" if failed
                         else "the comparison report failed")


if __name__ == "__main__":
    main()
