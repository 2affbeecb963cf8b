"""Loss of a short hybrid-LM run with the Mamba-2 scan in float32 (``ssd_impl=torch``, the path
before mamba_ssm) against mamba_ssm's kernels with bf16 conv and scan inputs (``triton``), from the
same initial weights and the same batches; a second float32 run with another seed (other weights,
other batches) gives the run-to-run spread the difference is to be read against.

    PYTHONPATH=/tmp/site python -m experiments.bench.scan_loss --out experiments/bench/results

Each run: ``--steps`` AdamW steps (``fp4train.optim``: decay groups, fused on CUDA, linear warmup
then cosine) under bf16 autocast on the standard-library byte corpus, every linear in bf16 (the
scan is what differs). Reported per run: the mean training loss over each tenth of the run and the
validation loss at the end (``--val-batches`` fixed windows). Writes ``scan_loss.json`` and
``scan_loss.md`` to ``--out``. ``--impl torch`` runs only the float32 runs (they need no mamba_ssm,
so they can run while it builds); a later call with ``--impl triton`` and the same settings adds its
run to the rows already in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler

from fp4train.data import build_datasets
from fp4train.models import build_model
from fp4train.optim import OptimConfig, build_optimizer, build_scheduler


@dataclass(frozen=True)
class Run:
    label: str
    ssd_impl: str
    seed: int = 0


RUNS = (Run("float32 scan (torch)", "torch"), Run("bf16 inputs, mamba_ssm (triton)", "triton"),
        Run("float32 scan (torch), seed 1", "torch", seed=1))


def train_run(run: Run, size: str, steps: int, batch: int, seq: int, lr: float, val_batches: int, device: str) -> dict:
    """One run (module doc): its per-tenth mean training losses, final validation loss and time."""
    train_set, val_set = build_datasets("stdlib_text", seq_len=seq, seed=run.seed, val_samples=val_batches * batch)
    torch.manual_seed(run.seed)
    with torch.device(device):
        model = build_model("hybrid_lm", size, ssd_impl=run.ssd_impl)
    cfg = OptimConfig(lr=lr, warmup_steps=max(steps // 10, 1))
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, steps, cfg)
    sampler = RandomSampler(train_set, replacement=True, num_samples=steps * batch,
                            generator=torch.Generator().manual_seed(run.seed))
    losses = []
    start = time.perf_counter()
    for x, y in DataLoader(train_set, batch_size=batch, sampler=sampler):
        x, y = x.to(device), y.to(device)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        val = [F.cross_entropy(model(x.to(device)).flatten(0, 1).float(), y.to(device).flatten()).item()
               for x, y in DataLoader(val_set, batch_size=batch)]
    tenth = max(len(losses) // 10, 1)
    return {"label": run.label, "ssd_impl": run.ssd_impl, "seed": run.seed, "seconds": seconds,
            "train_loss_by_tenth": [sum(losses[i:i + tenth]) / len(losses[i:i + tenth]) for i in range(0, len(losses), tenth)],
            "val_loss": sum(val) / len(val)}


def markdown(rows: list[dict], setting: str) -> str:
    """Per run: the training loss of the first and last tenth, the final validation loss and its
    difference from the first run's."""
    ref = rows[0]["val_loss"]
    lines = [f"Hybrid LM {setting}: the Mamba-2 scan's precision against the loss. Same weights and batches "
             "for the first two runs; the seed-1 run shows the spread between runs.", "",
             "| run | train loss, first tenth | train loss, last tenth | val loss | val − first run's | time s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['train_loss_by_tenth'][0]:.4f} | {r['train_loss_by_tenth'][-1]:.4f} | "
                     f"{r['val_loss']:.4f} | {r['val_loss'] - ref:+.4f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def earlier_rows(path: Path, setting: str) -> dict[str, dict]:
    """The rows of an earlier call with the same ``setting`` written to ``path``, by label; none when
    there is no such file or its setting differs."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    return {row["label"]: row for row in earlier["rows"]} if earlier["setting"] == setting else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", default="small")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-batches", type=int, default=8)
    parser.add_argument("--impl", nargs="+", choices=("torch", "triton"), default=["torch", "triton"],
                        help="run only the runs with these ssd_impl values (module doc)")
    args = parser.parse_args()
    setting = f"{args.size}, {args.steps} steps of {args.batch}×{args.seq} tokens, lr {args.lr:g}, on {torch.cuda.get_device_name()}"
    rows = earlier_rows(args.out / "scan_loss.json", setting)
    for run in RUNS:
        if run.ssd_impl in args.impl:
            rows[run.label] = train_run(run, args.size, args.steps, args.batch, args.seq, args.lr, args.val_batches, "cuda")
            print(json.dumps(rows[run.label]), flush=True)
    rows = [rows[run.label] for run in RUNS if run.label in rows]
    table = markdown(rows, setting)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scan_loss.json").write_text(json.dumps({"setting": setting, "torch": torch.__version__, "rows": rows}, indent=1))
    (args.out / "scan_loss.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
