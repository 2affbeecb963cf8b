"""Training-step benchmark (issue 6 c): the hybrid LM and the ViT, one step per recipe vs BF16.

    PYTHONUNBUFFERED=1 python -m experiments.bench.train_step --out results/

Per model and recipe: a full optimizer step (forward, backward, AdamW) under bf16 autocast, every
linear inside the blocks quantized (``bf16_first_blocks = bf16_last_blocks = 0``: the worst case),
median step time over ``--steps`` after warm-up, items per second, and peak GPU memory. All
recipes of a model run side by side in one process (``--models`` / ``--recipes`` pick a subset;
bf16 always runs). ``--profile`` adds each step's GPU busy time, largest kernels and costliest
Python functions. ``--cuda-graph`` adds each recipe's step with the forward and backward replayed
from CUDA graphs (``fp4train.graphs``, as ``trainer.cuda_graph=true`` trains), compared with bf16
replayed the same way; both modes start from the same weights and draw the same SR bits, so
their final losses are equal wherever PyTorch runs the same kernels under capture (the ViT; not
the hybrid LM, bf16 included: NOTES.md v8). Writes ``train_step.json`` and ``train_step.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fp4train.convert import convert
from fp4train.graphs import capture_training_graph
from fp4train.models import build_model
from fp4train.recipes import RecipeConfig

RECIPES = {  # label: RecipeConfig switches
    "bf16": {"name": "bf16"}, "fp8": {"name": "fp8"}, "mxfp4": {"name": "mxfp4"}, "nvfp4": {"name": "nvfp4"},
    "mxfp4 mx_fp8_gemm": {"name": "mxfp4", "mx_fp8_gemm": True},
}
MODELS = {  # name: (size, overrides, batch maker, items per batch, item name)
    "hybrid_lm": ("small", {}, lambda: torch.randint(0, 256, (8, 1025), device="cuda"), 8 * 1024, "tokens"),
    "vit": ("small", {"num_classes": 100}, lambda: torch.randn(256, 3, 32, 32, device="cuda"), 256, "images"),
}


def model_input(name: str, batch: torch.Tensor) -> torch.Tensor:
    return batch[:, :-1].contiguous() if name == "hybrid_lm" else batch


def loss_of(name: str, forward, batch: torch.Tensor) -> torch.Tensor:
    logits = forward(model_input(name, batch))
    if name == "hybrid_lm":
        return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
    return F.cross_entropy(logits.float(), torch.zeros(len(batch), dtype=torch.long, device="cuda"))


def kernel_times(step) -> list[tuple[str, float]]:
    """GPU ms per kernel name over one ``step()``, the largest first (a profiler trace)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    times = [(e.key[:60], e.self_device_time_total / 1e3) for e in prof.key_averages() if e.self_device_time_total > 0]
    return sorted(times, key=lambda kv: -kv[1])


def host_functions(step, n: int = 12) -> list[tuple[str, float]]:
    """CPU ms per Python function (own time, cProfile) over one ``step()``, the ``n`` largest first:
    where a launch-bound step spends its time."""
    prof = cProfile.Profile()
    prof.enable()
    step()
    torch.cuda.synchronize()
    prof.disable()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, primitive calls, own s, cumulative s, callers)
    own = [(f"{Path(f).name}:{line}({fn}) ×{calls}", t * 1e3) for (f, line, fn), (_, calls, t, _, _) in stats.items()]
    return sorted(own, key=lambda kv: -kv[1])[:n]


def bench(name: str, recipe: str, steps: int, profile: bool = False, graphed: bool = False) -> dict:
    size, overrides, make_batch, items, item_name = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, size, **overrides).cuda()
    report = convert(model, RecipeConfig(**RECIPES[recipe], bf16_first_blocks=0, bf16_last_blocks=0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = make_batch()
    times = []
    torch.cuda.reset_peak_memory_stats()
    forward = model
    if graphed:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            forward = capture_training_graph(model, (model_input(name, batch),))

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_of(name, forward, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for i in range(steps + 3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t)
    step_ms = statistics.median(times) * 1e3
    row = {
        "model": f"{name} {size}", "recipe": recipe, "cuda_graph": graphed, "quantized_linears": len(report.quantized),
        "step_ms": step_ms, f"{item_name}_per_s": items / step_ms * 1e3,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "loss": loss.item(),
    }
    if profile:  # is the step bound by its kernels or by the host?
        kernels = kernel_times(step)
        row["gpu_busy_ms"] = sum(t for _, t in kernels)
        row["top_kernels_gpu_ms"] = kernels[:8]
        row["top_host_functions_ms"] = host_functions(step)
    if graphed:
        forward.release()  # the graphs' memory goes back before the next model's peak
    return row


def markdown(rows: list[dict], device: str) -> str:
    """The table; with ``--profile`` also each step's GPU busy time (the sum of its kernels' times),
    which shows whether the step is bound by the GPU or by the host."""
    busy = all("gpu_busy_ms" in r for r in rows)
    lines = [f"Training step per recipe on {device} (torch {torch.__version__}); every block linear quantized. "
             "Ratios against bf16 run the same way (eager or CUDA graph).", "",
             "| model | recipe | CUDA graph | quantized linears | step ms | × bf16 time | items/s | peak GiB | × bf16 memory | final loss |"
             + (" GPU busy ms | × bf16 GPU busy |" if busy else ""),
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if busy else "")]
    for r in rows:
        graphed = r.get("cuda_graph", False)
        base = next(b for b in rows if b["model"] == r["model"] and b["recipe"] == "bf16" and b.get("cuda_graph", False) == graphed)
        items = next(v for k, v in r.items() if k.endswith("_per_s"))
        line = (f"| {r['model']} | {r['recipe']} | {'yes' if graphed else 'no'} | {r['quantized_linears']} | {r['step_ms']:.1f} | "
                f"{r['step_ms'] / base['step_ms']:.2f} | {items:,.0f} | {r['peak_gib']:.2f} | "
                f"{r['peak_gib'] / base['peak_gib']:.2f} | {r['loss']:.6f} |")
        if busy:
            line += f" {r['gpu_busy_ms']:.1f} | {r['gpu_busy_ms'] / base['gpu_busy_ms']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="record one step's GPU busy time, largest kernels and costliest Python functions per recipe")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES), help="bf16 always runs (the baseline)")
    parser.add_argument("--cuda-graph", action="store_true", help="also time each recipe with forward and backward replayed from CUDA graphs")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        for recipe in ["bf16"] + [r for r in args.recipes if r != "bf16"]:
            for graphed in (False, True) if args.cuda_graph else (False,):
                rows.append(bench(name, recipe, args.steps, args.profile, graphed))
                print(json.dumps(rows[-1]), flush=True)
                gc.collect()  # the finished run's model, optimizer and graphs can sit in reference cycles:
                torch.cuda.empty_cache()  # free them before the next run's peak is measured
    device = torch.cuda.get_device_name()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_step.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=1))
    table = markdown(rows, device)
    (args.out / "train_step.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
