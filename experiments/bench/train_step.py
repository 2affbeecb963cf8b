"""Training-step benchmark: the hybrid LM and the ViT per size and recipe, eager and from CUDA graphs.

    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python -m experiments.bench.train_step --out experiments/bench/results

Each case is a full optimizer step (forward, backward, fused AdamW) under bf16 autocast with every
linear inside the blocks converted to the recipe (``bf16_first_blocks = bf16_last_blocks = 0``: the
worst case): the median step time over ``--steps`` after 3 warm-up steps; tokens/s (LM) or
images/s (ViT); MFU, the model FLOPs of a step (``experiments/bench/flops.py``: 6·N_linear per
token plus attention's and the SSD scan's products, forward + backward) per second over
``--peak-tflops`` (default 989.4: the dense bf16 tensor-core peak of an H100 SXM and of an H200);
the peak GPU memory of the steps (weights, gradients and AdamW state included); and the step time
over bf16's in the same mode (the same model, size, batch, scan and graph mode). The hybrid LM
runs its Mamba-2 scan as ``--ssd-impl`` says per case (``triton``: mamba_ssm's kernels, which must
import — ``experiments/bench/build_mamba_ssm.sh`` — or that case reports the error; ``torch``: the
float32 PyTorch scan). With ``cuda_graph`` the forward and backward are replayed from CUDA graphs
(``fp4train.cuda_graphs``, as ``trainer.cuda_graph=true`` trains).

Plans (``--plan``, several allowed; ``--only`` keeps the cases whose label contains any of its words):

* ``default`` (fits one 8-minute GPU command): LM small at 32×1024 tokens per step with the triton
  scan — bf16, fp8, mxfp4, nvfp4, eager and CUDA graph; LM small bf16 with the torch scan (the path
  before mamba_ssm; at 8×1024 tokens, its 32 GiB peak there would be ~4× at 32×1024) and with the
  triton scan but our PyTorch gated norm, and with PyTorch's conv1d instead of causal-conv1d's kernel
  (is each fused kernel worth it?); LM base bf16 and nvfp4, eager
  and graph; ViT small (256 images of 32×32) bf16 and nvfp4, eager and graph;
* ``sizes``: LM 1b bf16 and nvfp4 at 16×1024 tokens, eager;
* ``compile``: LM small and ViT small, bf16 and nvfp4, with ``compile_blocks`` (regional
  ``torch.compile``), eager and graph.

``--profile`` adds each case's GPU busy time, largest kernels and costliest Python functions: what
bounds a step. Writes ``train_step.json`` and ``train_step.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.bench.flops import train_flops

H100_H200_BF16_DENSE_TFLOPS = 989.4
RECIPES = {  # label: RecipeConfig switches
    "bf16": {"name": "bf16"}, "fp8": {"name": "fp8"}, "mxfp4": {"name": "mxfp4"}, "nvfp4": {"name": "nvfp4"},
    "mxfp4 mx_fp8_gemm": {"name": "mxfp4", "mx_fp8_gemm": True},
}
VOCAB, VIT_CLASSES = 256, 100
TOP_KERNELS = 25  # kernels kept per profiled case, the largest first


@dataclass(frozen=True)
class Case:
    """One benchmarked step. ``batch``: sequences of ``seq`` tokens (LM) or images (ViT)."""

    model: str
    size: str
    recipe: str
    batch: int
    seq: int = 1024
    cuda_graph: bool = False
    ssd_impl: str = "triton"
    fused_gated_norm: bool = True
    fused_causal_conv: bool = True
    compile_blocks: bool = False

    @property
    def is_lm(self) -> bool:
        return self.model == "hybrid_lm"

    @property
    def label(self) -> str:
        parts = [f"{self.model} {self.size}", self.recipe, f"{self.batch}×{self.seq}" if self.is_lm else f"{self.batch} img"]
        if self.is_lm:
            parts.append(f"{self.ssd_impl} scan" + self.torch_ops_note)
        if self.compile_blocks:
            parts.append("compiled blocks")
        parts.append("graph" if self.cuda_graph else "eager")
        return ", ".join(parts)

    @property
    def torch_ops_note(self) -> str:
        """Which of the triton path's fused kernels this case runs as PyTorch ops instead ("" if none)."""
        if self.ssd_impl != "triton":
            return ""
        return "".join(note for on, note in ((self.fused_gated_norm, ", torch norm"), (self.fused_causal_conv, ", torch conv")) if not on)

    def default_path(self) -> "Case":
        """This case on the default path — the triton scan with both fused kernels, eager blocks —
        which the variants are compared with."""
        return replace(self, ssd_impl="triton", fused_gated_norm=True, fused_causal_conv=True, compile_blocks=False)

    @property
    def is_default_path(self) -> bool:
        return self == self.default_path()

    def baseline(self) -> "Case":
        """The bf16 case this one's time and memory are compared with."""
        return replace(self, recipe="bf16")


def _both_modes(cases: list[Case]) -> list[Case]:
    return [replace(c, cuda_graph=g) for c in cases for g in (False, True)]


def plan_cases(plan: str) -> list[Case]:
    """The cases of a named plan (module doc)."""
    lm, vit = "hybrid_lm", "vit"
    if plan == "default":
        return (_both_modes([Case(lm, "small", r, 32) for r in ("bf16", "fp8", "mxfp4", "nvfp4")])
                + [Case(lm, "small", "bf16", 8, ssd_impl="torch"), Case(lm, "small", "bf16", 32, fused_gated_norm=False),
                   Case(lm, "small", "bf16", 32, fused_causal_conv=False)]
                + _both_modes([Case(lm, "base", r, 32) for r in ("bf16", "nvfp4")])
                + _both_modes([Case(vit, "small", r, 256) for r in ("bf16", "nvfp4")]))
    if plan == "sizes":
        return [Case(lm, "1b", r, 16) for r in ("bf16", "nvfp4")]
    if plan == "compile":
        return _both_modes([Case(lm, "small", r, 32, compile_blocks=True) for r in ("bf16", "nvfp4")]
                           + [Case(vit, "small", r, 256, compile_blocks=True) for r in ("bf16", "nvfp4")])
    raise ValueError(f"unknown plan {plan!r}; valid: {list(PLANS)}")


PLANS = ("default", "sizes", "compile")


def select(cases: list[Case], only: list[str] | None) -> list[Case]:
    """``cases`` whose label contains any of ``only`` (all if none given), each once, in order."""
    seen, out = set(), []
    for c in cases:
        if c not in seen and (not only or any(word in c.label for word in only)):
            seen.add(c)
            out.append(c)
    return out


def model_input(case: Case, batch: torch.Tensor) -> torch.Tensor:
    return batch[:, :-1].contiguous() if case.is_lm else batch


def loss_of(case: Case, forward, batch: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    logits = forward(model_input(case, batch))
    if case.is_lm:
        return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
    return F.cross_entropy(logits.float(), labels)


def kernel_times(step) -> list[tuple[str, float]]:
    """GPU ms per kernel name over one ``step()``, the largest first (a profiler trace)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    times = [(e.key[:60], e.self_device_time_total / 1e3) for e in prof.key_averages() if e.self_device_time_total > 0]
    return sorted(times, key=lambda kv: -kv[1])


def host_functions(step, n: int = 12) -> list[tuple[str, float]]:
    """CPU ms per Python function (own time, cProfile) over one ``step()``, the ``n`` largest first."""
    prof = cProfile.Profile()
    prof.enable()
    step()
    torch.cuda.synchronize()
    prof.disable()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, primitive calls, own s, cumulative s, callers)
    own = [(f"{Path(f).name}:{line}({fn}) ×{calls}", t * 1e3) for (f, line, fn), (_, calls, t, _, _) in stats.items()]
    return sorted(own, key=lambda kv: -kv[1])[:n]


def bench(case: Case, steps: int, peak_tflops: float, profile: bool = False, device: str = "cuda") -> dict:
    """Time ``case`` (module doc); the result row. ``device="cpu"`` runs the same code without CUDA
    graphs and memory statistics (the CPU test of this script)."""
    from fp4train.convert import convert
    from fp4train.cuda_graphs import capture_training_graph
    from fp4train.linear import QuantLinear
    from fp4train.models import build_model
    from fp4train.models.compile import compile_blocks
    from fp4train.recipes import RecipeConfig

    torch.manual_seed(0)
    overrides = ({"ssd_impl": case.ssd_impl, "fused_gated_norm": case.fused_gated_norm,
                  "fused_causal_conv": case.fused_causal_conv, "vocab_size": VOCAB}
                 if case.is_lm else {"num_classes": VIT_CLASSES})
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.device(device):
        model = build_model(case.model, case.size, **overrides)
    flops = train_flops(model, case.batch, case.seq if case.is_lm else None)
    report = convert(model, RecipeConfig(**RECIPES[case.recipe], bf16_first_blocks=0, bf16_last_blocks=0))
    if case.compile_blocks:
        compile_blocks(model, eager=(QuantLinear,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    if case.is_lm:
        batch, labels = torch.randint(0, VOCAB, (case.batch, case.seq + 1), device=device), None
    else:
        size = model.config.image_size
        batch = torch.randn(case.batch, model.config.in_channels, size, size, device=device)
        labels = torch.randint(0, VIT_CLASSES, (case.batch,), device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    forward = model
    if case.cuda_graph:
        with torch.autocast(device, dtype=torch.bfloat16):
            forward = capture_training_graph(model, (model_input(case, batch),))

    def step() -> torch.Tensor:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = loss_of(case, forward, batch, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    times = []
    for i in range(steps + 3):
        sync()
        t = time.perf_counter()
        loss = step()
        sync()
        if i >= 3:
            times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    items = case.batch * (case.seq if case.is_lm else 1)
    row = {
        **asdict(case), "label": case.label, "quantized_linears": len(report.quantized), "step_ms": step_s * 1e3,
        "items_per_s": items / step_s, "item": "tokens" if case.is_lm else "images",
        "flops_per_step": flops, "mfu": flops["total"] / step_s / (peak_tflops * 1e12), "peak_tflops": peak_tflops,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None, "loss": loss.item(),
    }
    if profile:  # is the step bound by its kernels or by the host?
        kernels = kernel_times(step)
        row["gpu_busy_ms"] = sum(t for _, t in kernels)
        row["top_kernels_gpu_ms"] = kernels[:TOP_KERNELS]
        row["top_host_functions_ms"] = host_functions(step)
    if case.cuda_graph:
        forward.release()  # the graphs' memory goes back before the next case's peak
    return row


def _batch(r: dict) -> str:
    return f"{r['batch']}×{r['seq']}" if r["model"] == "hybrid_lm" else f"{r['batch']} img"


def _fmt_items(r: dict) -> str:
    return f"{r['items_per_s']:,.0f} {'tok' if r['item'] == 'tokens' else 'img'}/s"


def markdown(rows: list[dict], device: str) -> str:
    """The results table: one line per case, ratios against the bf16 case run the same way
    (``Case.baseline``); a failed case shows its error. With ``--profile``, GPU busy time too."""
    busy = any("gpu_busy_ms" in r for r in rows)
    peak = next((r["peak_tflops"] for r in rows if "peak_tflops" in r), H100_H200_BF16_DENSE_TFLOPS)
    lines = [f"Training step on {device} (torch {torch.__version__}): every block linear in the recipe, bf16 autocast, "
             f"fused AdamW. MFU: model FLOPs (experiments/bench/flops.py) per second over {peak:g} TFLOP/s dense bf16. "
             "× bf16: step time over the bf16 case run the same way (model, size, batch, scan, graph mode).", "",
             "| model | recipe | batch | scan | CUDA graph | step ms | throughput | MFU | peak GiB | × bf16 time | × bf16 memory | loss |"
             + (" GPU busy ms |" if busy else ""),
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if busy else "")]
    by_case = {case_of(r): r for r in rows}
    for case, r in by_case.items():
        scan = f"{case.ssd_impl}{case.torch_ops_note}" if case.is_lm else ""
        head = (f"| {case.model} {case.size}{' (compiled blocks)' if case.compile_blocks else ''} | {case.recipe} | {_batch(r)} | "
                f"{scan} | {'yes' if case.cuda_graph else 'no'} |")
        if "error" in r:
            lines.append(head + f" failed: {r['error']} | | | | | | |" + (" |" if busy else ""))
            continue
        base = by_case.get(case.baseline(), {})
        ratio = (lambda key: f"{r[key] / base[key]:.2f}" if base.get(key) and r[key] is not None else "—")  # noqa: E731
        peak = "—" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        line = (head + f" {r['step_ms']:.1f} | {_fmt_items(r)} | {100 * r['mfu']:.1f}% | {peak} | "
                f"{ratio('step_ms')} | {ratio('peak_gib')} | {r['loss']:.4f} |")
        if busy:
            line += f" {r['gpu_busy_ms']:.1f} |" if "gpu_busy_ms" in r else " |"
        lines.append(line)
    extra = comparisons(rows)
    return "\n".join(lines + (["", "Default path (triton scan, fused gated norm, eager blocks) against one choice changed, "
                                   "throughput ratio:", *extra] if extra else []))


def case_of(row: dict) -> Case:
    """The case a result row was measured for (fields a row of an older run lacks take their defaults)."""
    return Case(**{k: row[k] for k in Case.__dataclass_fields__ if k in row})


def comparisons(rows: list[dict]) -> list[str]:
    """Throughput ratios of the variants that differ from the default path (``Case.is_default_path``)
    in one choice: the torch scan, our PyTorch gated norm, PyTorch's conv1d, compiled blocks — each
    against the default-path case of the same model, size, recipe and graph mode (batches may differ)."""
    ok = [(case_of(r), r) for r in rows if "error" not in r]
    reference = {replace(c, batch=0): r for c, r in ok if c.is_default_path}
    lines = []
    for c, r in ok:
        ref = reference.get(replace(c.default_path(), batch=0))
        if c.is_default_path or ref is None:
            continue
        what = ("the torch scan" if c.ssd_impl == "torch" else "our PyTorch gated norm" if not c.fused_gated_norm
                else "PyTorch's conv1d" if not c.fused_causal_conv else "compiled blocks")
        lines.append(f"- {ref['model']} {ref['size']} {ref['recipe']} {'graph' if ref['cuda_graph'] else 'eager'}: "
                     f"{_fmt_items(ref)} at {_batch(ref)} vs {_fmt_items(r)} with {what} at {_batch(r)}: "
                     f"{ref['items_per_s'] / r['items_per_s']:.2f}×")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plan", nargs="+", choices=PLANS, default=["default"])
    parser.add_argument("--only", nargs="+", help="keep the cases whose label contains any of these words")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=H100_H200_BF16_DENSE_TFLOPS,
                        help="the GPU's dense bf16 peak for MFU (default: H100 SXM / H200 datasheet)")
    parser.add_argument("--profile", action="store_true", help="record each case's GPU busy time, largest kernels and costliest Python functions")
    args = parser.parse_args()
    cases = select([c for plan in args.plan for c in plan_cases(plan)], args.only)
    rows = []
    for case in cases:
        try:
            rows.append(bench(case, args.steps, args.peak_tflops, args.profile))
        except Exception as e:  # a case that cannot run (out of memory, mamba_ssm missing) is reported, the others go on
            traceback.print_exc()
            rows.append({**asdict(case), "label": case.label, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
        print(json.dumps(rows[-1]), flush=True)
        write_results(args.out, rows)  # after every case: a command cut at its time limit keeps the finished ones
        gc.collect()  # the finished case's model, optimizer and graphs can sit in reference cycles:
        torch.cuda.empty_cache()  # free them before the next case's peak is measured
    print(markdown(rows, torch.cuda.get_device_name()))


def write_results(out: Path, rows: list[dict]) -> None:
    """``train_step.json`` and ``train_step.md`` of the rows so far, in ``out``."""
    device = torch.cuda.get_device_name()
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=1))
    (out / "train_step.md").write_text(markdown(rows, device) + "\n")


if __name__ == "__main__":
    main()
