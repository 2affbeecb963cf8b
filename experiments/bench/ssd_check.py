"""Check of the Mamba-2 kernels behind ``ssd_impl`` (issue 16): mamba_ssm's Triton scan and fused
gated RMSNorm against our PyTorch code, on the shapes of every hybrid-LM size, forward and every
input gradient; and that the models' attention calls run on SDPA's flash kernel.

    PYTHONPATH=/tmp/site python -m experiments.bench.ssd_check --out experiments/bench/results

Each row is a relative error ``‖a − ref‖ / ‖ref‖`` (Frobenius, in float64) of the output and of the
gradient of every input under one random upstream gradient, ``ref`` being our scan (``ssd`` with
``impl="torch"``) or norm in float64 on the same — possibly bf16-rounded — inputs, so a row
measures the arithmetic of the implementation, not the rounding of its inputs. Pass thresholds
(on the largest of the output and gradient errors):

* ``torch fp32`` (our scan in float32): 1e-4 — float32 has 24 significant bits; the scan sums a
  chunk's worth of terms.
* ``triton fp32`` (mamba_ssm with float32 x, B, C): 1e-2 — its ``tl.dot``s round their float32
  operands to TF32 (11 significant bits, relative spacing 2^-10 ≈ 1e-3).
* ``triton bf16`` (x, B, C in bf16, as the model runs it under autocast) and the gated norms with
  bf16 inputs: 2e-2 — bf16 keeps 8 significant bits (spacing 2^-8 ≈ 3.9e-3); intermediates stored
  in bf16 (the chunk states, the output) add a few such roundings.
* ``causal conv``: the depthwise causal conv1d + SiLU on bf16 inputs, ``F.conv1d`` and
  causal-conv1d's ``causal_conv1d_fn`` (``fused_causal_conv``), against ours in float64: 2e-2 (bf16
  output). A failing row when causal-conv1d does not import.
* ``mixer``: the whole ``Mamba2Mixer`` (bf16 autocast, in_proj/out_proj included) with the triton
  path against the torch path — the difference the bf16 conv and scan inputs make — on the output,
  the input gradient and every parameter gradient: 5e-2.
* ``sdpa flash``: one forward and backward of each model's attention block under bf16 autocast with
  only the flash backend allowed (``torch.nn.attention.sdpa_kernel``); it fails if SDPA cannot use it.

``--interpret SDIST`` runs the same comparisons on tiny shapes on the CPU through Triton's
interpreter, from mamba-ssm's source package (``experiments/bench/gpu_wheels.sh`` downloads it to
``.whl/``): the CPU test of the kernels' calling convention (tests/models/test_mamba_ssm_interpret.py).
Exit status 1 if any row fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tarfile
import tempfile
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fp4train.models import hybrid_lm, model_config

THRESHOLDS = {"torch fp32": 1e-4, "triton fp32": 1e-2, "triton bf16": 2e-2, "norm": 2e-2, "conv": 2e-2, "mixer": 5e-2}
SCAN_INPUTS = ("x", "dt", "dt_bias", "A", "B", "C", "D")


@dataclass(frozen=True)
class ScanShape:
    """One size's scan: batch b, length l, H heads of dim P, G groups, state N, chunk Q."""

    name: str
    b: int
    l: int
    H: int
    P: int
    G: int
    N: int
    Q: int
    d_model: int

    @classmethod
    def of_size(cls, size: str, b: int, l: int) -> "ScanShape":
        c = model_config("hybrid_lm", size)
        return cls(size, b, l, c.mamba_n_heads, c.mamba_head_dim, c.mamba_n_groups, c.mamba_d_state,
                   c.mamba_chunk_size, c.d_model)


TINY = ScanShape("tiny shapes", b=1, l=24, H=2, P=8, G=2, N=16, Q=16, d_model=16)  # 2 chunks, the last one partial


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm()).item()


def scan_inputs(s: ScanShape, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Float32 inputs shaped and scaled as the mixer's: dt_bias and A as its init, O(1) activations."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    dt = torch.exp(torch.rand(s.H, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    t = {
        "x": torch.randn(s.b, s.l, s.H, s.P, generator=g),
        "dt": 0.5 * torch.randn(s.b, s.l, s.H, generator=g),
        "dt_bias": dt + torch.log(-torch.expm1(-dt)),
        "A": -torch.empty(s.H).uniform_(1, 16, generator=g),
        "B": torch.randn(s.b, s.l, s.G, s.N, generator=g),
        "C": torch.randn(s.b, s.l, s.G, s.N, generator=g),
        "D": 1 + 0.1 * torch.randn(s.H, generator=g),
    }
    return {k: v.to(device) for k, v in t.items()}


def _fwd_bwd(fn: Callable, inputs: dict[str, torch.Tensor], dy: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    y = fn(**leaves)
    grads = torch.autograd.grad(y, list(leaves.values()), dy.to(y.dtype))
    return y.detach(), dict(zip(leaves, grads))


def _row(check: str, shape: str, y, grads, ref_y, ref_grads, threshold: float) -> dict:
    errs = {k: rel_err(g, ref_grads[k]) for k, g in grads.items()}
    worst = max(errs, key=errs.get)
    fwd = rel_err(y, ref_y)
    return {"check": check, "shape": shape, "fwd": fwd, "grads": errs, "worst_grad": worst,
            "threshold": threshold, "pass": max(fwd, errs[worst]) <= threshold}


def check_scan(s: ScanShape, device: str, variants: tuple[str, ...]) -> list[dict]:
    """Each variant's output and gradients against our scan in float64 on the same inputs."""
    from fp4train.models.mamba2 import ssd

    inputs = scan_inputs(s, device)
    rows = []
    for variant in variants:
        impl, dtype = variant.split()
        low = {k: (v.to(torch.bfloat16) if dtype == "bf16" and k in "xBC" else v) for k, v in inputs.items()}
        dy = torch.randn(s.b, s.l, s.H, s.P, generator=torch.Generator().manual_seed(1)).to(device)
        dy = dy.to(low["x"].dtype)  # y's dtype: the reference gets the same rounded upstream gradient

        def run(impl=impl, **t):
            return ssd(t["x"], t["dt"], t["dt_bias"], t["A"], t["B"], t["C"], t["D"], s.Q, impl)

        ref_y, ref_g = _fwd_bwd(lambda **t: run("torch", **t), {k: v.double() for k, v in low.items()}, dy.double())
        y, g = _fwd_bwd(run, low, dy)
        rows.append(_row(f"scan {variant}", _describe(s), y, g, ref_y, ref_g, THRESHOLDS[variant]))
    return rows


def check_gated_norm(s: ScanShape, device: str) -> list[dict]:
    """Our gated RMSNorm and mamba_ssm's ``rmsnorm_fn`` on bf16 y, z against ours in float64."""
    from fp4train.models.mamba2 import RMSNorm
    from fp4train.models.mamba_ssm_ops import mamba_ssm_kernels

    d_inner = s.H * s.P
    g = torch.Generator().manual_seed(2)
    inputs = {"y": torch.randn(s.b, s.l, d_inner, generator=g), "z": torch.randn(s.b, s.l, d_inner, generator=g),
              "w": 1 + 0.1 * torch.randn(d_inner, generator=g)}
    inputs = {k: (v.to(torch.bfloat16) if k != "w" else v).to(device) for k, v in inputs.items()}
    dy = torch.randn(s.b, s.l, d_inner, generator=g).to(device, torch.bfloat16)  # the outputs' dtype
    group = d_inner // s.G

    norm = RMSNorm(d_inner, eps=1e-5, group_size=group)

    def ours(y, z, w):
        return torch.func.functional_call(norm, {"weight": w}, (y,), {"gate": z})

    def fused(y, z, w):
        return mamba_ssm_kernels()[1](y, w, None, z=z, eps=1e-5, group_size=group, norm_before_gate=False)

    ref_y, ref_g = _fwd_bwd(ours, {k: v.double() for k, v in inputs.items()}, dy.double())
    rows = []
    for name, fn in (("gated norm torch bf16", ours), ("gated norm triton bf16", fused)):
        y, grads = _fwd_bwd(fn, inputs, dy)
        rows.append(_row(name, f"b{s.b} l{s.l} d_inner {d_inner} groups {s.G}", y, grads, ref_y, ref_g, THRESHOLDS["norm"]))
    return rows


def check_causal_conv(s: ScanShape, device: str, width: int = 4) -> list[dict]:
    """``causal_conv_silu`` through ``F.conv1d`` and through causal-conv1d's kernel on bf16 inputs (a
    channel-last slice, as the mixer hands it) against ``F.conv1d`` in float64."""
    from fp4train.models.mamba2 import causal_conv_silu
    from fp4train.models.mamba_ssm_ops import causal_conv1d_or_why

    conv_dim = s.H * s.P + 2 * s.G * s.N
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(s.b, s.l, conv_dim + 16, generator=g)  # xbc is a slice of in_proj's output
    inputs = {"xbc": wide[..., 8:8 + conv_dim], "weight": 0.5 * torch.randn(conv_dim, 1, width, generator=g),
              "bias": 0.1 * torch.randn(conv_dim, generator=g)}
    inputs = {k: v.to(device, torch.bfloat16) for k, v in inputs.items()}
    dy = torch.randn(s.b, s.l, conv_dim, generator=g).to(device, torch.bfloat16)
    ref_y, ref_g = _fwd_bwd(causal_conv_silu, {k: v.double() for k, v in inputs.items()}, dy.double())
    shape = f"b{s.b} l{s.l} d {conv_dim} width {width}"
    rows = [_row("causal conv torch bf16", shape, *_fwd_bwd(causal_conv_silu, inputs, dy), ref_y, ref_g, THRESHOLDS["conv"])]
    fused = causal_conv1d_or_why(width)
    if isinstance(fused, str):
        rows.append({"check": "causal conv cuda bf16", "shape": shape, "pass": False, "note": fused})
    else:
        y, grads = _fwd_bwd(lambda **t: causal_conv_silu(**t, fused=fused), inputs, dy)
        rows.append(_row("causal conv cuda bf16", shape, y, grads, ref_y, ref_g, THRESHOLDS["conv"]))
    return rows


def check_mixer(s: ScanShape, device: str, autocast: bool, fused_norm: tuple[bool, ...] = (True, False)) -> list[dict]:
    """The mixer with the triton path (with each ``fused_norm`` choice) against the torch path."""
    from fp4train.models.mamba2 import Mamba2Mixer

    torch.manual_seed(0)
    mixer = Mamba2Mixer(s.d_model, n_heads=s.H, head_dim=s.P, n_groups=s.G, d_state=s.N, chunk_size=s.Q).to(device)
    u = torch.randn(s.b, s.l, s.d_model, device=device)
    dy = torch.randn(s.b, s.l, s.d_model, device=device)
    ctx = torch.autocast(device, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    def run(impl: str, fused: bool):
        mixer.ssd_impl, mixer.fused_gated_norm = impl, fused
        leaf = u.clone().requires_grad_()
        with ctx:
            y = mixer(leaf)
        params = dict(mixer.named_parameters())
        grads = torch.autograd.grad(y, [leaf, *params.values()], dy.to(y.dtype))
        return y.detach(), dict(zip(["u", *params], grads))

    ref_y, ref_g = run("torch", False)
    label = "bf16 autocast" if autocast else "fp32"
    return [_row(f"mixer triton{' + fused norm' if fused else ''} vs torch, {label}", _describe(s),
                 *run("triton", fused), ref_y, ref_g, THRESHOLDS["mixer"]) for fused in fused_norm]


def check_sdpa_flash(device: str) -> list[dict]:
    """One fwd+bwd of each model's attention block with SDPA restricted to the flash backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fp4train.models import build_model

    rows = []
    for name, size, x_shape in (("hybrid_lm", "small", (4, 1024, 768)), ("vit", "small", (64, 65, 384))):
        model = build_model(name, size).to(device)
        block = next(b for b in model.blocks if getattr(b, "kind", "*") == "*")
        x = torch.randn(*x_shape, device=device, requires_grad=True)
        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast(device, dtype=torch.bfloat16):
                block(x).float().square().mean().backward()
            ok, note = True, "flash"
        except RuntimeError as e:
            ok, note = False, str(e).splitlines()[0][:120]
        rows.append({"check": f"sdpa flash {name} {size}", "shape": f"x {tuple(x_shape)}", "pass": ok, "note": note})
    return rows


def _describe(s: ScanShape) -> str:
    return f"{s.name}: b{s.b} l{s.l} H{s.H}×P{s.P} G{s.G} N{s.N} Q{s.Q}"


def use_interpreter(sdist: Path) -> None:
    """Run mamba_ssm's Triton kernels on CPU tensors through Triton's interpreter (tests without a
    GPU): unpack the source package and import its kernel modules without the package ``__init__``
    (which loads the CUDA extension); keep one autotune config per kernel (autotuning times
    configs on a GPU); answer the two CUDA-runtime questions the launch code asks (the current
    device, the SM count) as an H100 would; and let the mixer take the triton path on CPU."""
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated: before their import
    root = Path(tempfile.mkdtemp(prefix="mamba_ssm_src_"))
    with tarfile.open(sdist) as tar:
        tar.extractall(root, filter="data")
    (src,) = root.glob("mamba_ssm-*/mamba_ssm")
    package = types.ModuleType("mamba_ssm")
    package.__path__ = [str(src)]
    sys.modules["mamba_ssm"] = package

    import triton

    autotune = triton.autotune

    def one_config(configs, **kwargs):
        cost = lambda c: math.prod(v for k, v in c.kwargs.items() if k.startswith("BLOCK_SIZE"))  # noqa: E731
        return autotune([min(configs, key=cost)], **kwargs)

    triton.autotune = one_config
    torch.cuda.device = lambda index: contextlib.nullcontext()
    torch.cuda.get_device_properties = lambda device: types.SimpleNamespace(multi_processor_count=132)
    import fp4train.models.mamba2 as mamba2

    mamba2.resolve_ssd_impl = lambda impl, device: impl


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"Mamba-2 kernels and SDPA check on {device} (torch {torch.__version__}). Relative errors "
             "‖a − ref‖/‖ref‖; a row passes if the output's and every gradient's error is at most its threshold.", "",
             "| check | shape | output | worst gradient | threshold | pass |", "|---|---|---:|---|---:|---|"]
    for r in rows:
        if "fwd" in r:
            worst = f"{r['grads'][r['worst_grad']]:.2e} ({r['worst_grad']})"
            lines.append(f"| {r['check']} | {r['shape']} | {r['fwd']:.2e} | {worst} | {r['threshold']:.0e} | "
                         f"{'yes' if r['pass'] else '**NO**'} |")
        else:
            lines.append(f"| {r['check']} | {r['shape']} | | {r['note']} | | {'yes' if r['pass'] else '**NO**'} |")
    return "\n".join(lines)


CHECKS = ("scan", "norm", "conv", "mixer", "sdpa")


def run_checks(shapes: list[ScanShape], device: str, checks: tuple[str, ...], interpret: bool = False) -> list[dict]:
    """The rows of ``checks`` (a subset of ``CHECKS``) for every shape; in the interpreter (CPU)
    float32 only, and the mixer with the fused norm only (each kernel call costs seconds there)."""
    rows: list[dict] = []
    variants = ("torch fp32", "triton fp32") if interpret else ("torch fp32", "triton fp32", "triton bf16")
    for s in shapes:
        print(f"checking {', '.join(c for c in checks if c != 'sdpa')} at {s} ...", file=sys.stderr, flush=True)
        new = []
        if "scan" in checks:
            new += check_scan(s, device, variants)
        if "norm" in checks:
            new += check_gated_norm(s, device)
        if "conv" in checks and not interpret:  # a CUDA kernel: no interpreter
            new += check_causal_conv(s, device)
        if "mixer" in checks:
            new += check_mixer(s, device, autocast=not interpret, fused_norm=(True,) if interpret else (True, False))
        for r in new:
            print(json.dumps(r), flush=True)
        rows += new
    if "sdpa" in checks and not interpret:
        rows += check_sdpa_flash(device)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write ssd_check.json and ssd_check.md here")
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=CHECKS)
    parser.add_argument("--sizes", nargs="+", default=list(hybrid_lm.SIZES), choices=list(hybrid_lm.SIZES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seqlen", type=int, default=1000, help="not a multiple of any chunk: the last chunk is partial")
    parser.add_argument("--interpret", type=Path, metavar="SDIST",
                        help="CPU: run the kernels from this mamba-ssm source package in Triton's interpreter, on tiny shapes")
    args = parser.parse_args(argv)
    if args.interpret:
        use_interpreter(args.interpret)
        device, shapes = "cpu", [TINY]
    else:
        if not torch.cuda.is_available():
            parser.error("needs a CUDA GPU (or --interpret SDIST on the CPU)")
        device, shapes = "cuda", [ScanShape.of_size(size, args.batch, args.seqlen) for size in args.sizes]
    rows = run_checks(shapes, device, tuple(args.checks), interpret=bool(args.interpret))
    name = "CPU (Triton interpreter)" if args.interpret else torch.cuda.get_device_name()
    table = markdown(rows, name)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ssd_check.json").write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1))
        (args.out / "ssd_check.md").write_text(table + "\n")
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
