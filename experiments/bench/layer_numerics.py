"""Checks of ``QuantLinear``'s autograd contract and SR streams on one device, and their cost:

    python -m experiments.bench.layer_numerics            # a CUDA GPU (the kernels' paths)
    python -m experiments.bench.layer_numerics --device cpu

Prints a pass/fail table, then (on a GPU) the time of one layer's forward + backward with and
without the input's gradient. Checks (each names what it compares, all bit for bit):

* ``quantize`` with SR and no generator draws fresh bits on every call, and ``torch.manual_seed``
  reproduces them (NVFP4: the fused kernel on a GPU; MXFP8: the torch reference);
* a layer called twice before one backward gives the gradients of the two calls run one after
  the other (each call's dy rounded with its own SR bits);
* an input that needs no gradient gets no Dgrad GEMM, a frozen weight no Wgrad GEMM;
* an input changed in place after forward fails backward (an identity-format Wgrad operand);
* ``saved_tensors_hooks`` that offload every saved tensor to the CPU give the same gradients;
* on a GPU, a layer called twice per step replays from a CUDA graph (``fp4train.cuda_graphs``) with
  the eager run's losses, weights and SR counters over three AdamW steps.
"""

from __future__ import annotations

import argparse
import time
import torch
import torch.nn as nn

import fp4train.linear as linear_module
from experiments.bench.graph_steps import train_steps
from fp4train.linear import QuantLinear
from fp4train.quant import QuantSpec, fake_quantize
from fp4train.recipes import RecipeConfig, build_recipe

RECIPES = ("nvfp4", "tetrajet", "mxfp8")


def _layer(recipe: str, device: str, n: int = 256, seed: int = 0) -> QuantLinear:
    torch.manual_seed(seed)
    return QuantLinear.from_linear(nn.Linear(n, n), build_recipe(RecipeConfig(name=recipe, seed=3)), layer_id=1).to(device)


def _grads(layer: QuantLinear, x: torch.Tensor, dy: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    layer(x).backward(dy)
    grads = [x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()]
    layer.weight.grad = layer.bias.grad = None
    return grads


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


def check_fresh_sr_bits(device: str) -> dict[str, bool]:
    x = torch.randn(128, 256, device=device)
    out = {}
    for spec in (QuantSpec("nvfp4", rounding="sr"), QuantSpec("mxfp8", rounding="sr", scale_rule="ceil")):
        torch.manual_seed(0)
        first, second = fake_quantize(x, spec), fake_quantize(x, spec)
        torch.manual_seed(0)
        again = fake_quantize(x, spec)
        out[f"quantize SR without generator, fresh bits per call, seed-reproducible ({spec.fmt})"] = (
            not torch.equal(first, second) and torch.equal(first, again)
        )
    return out


def check_two_calls(device: str) -> dict[str, bool]:
    out = {}
    g = torch.Generator().manual_seed(1)
    x1, x2, dy1, dy2 = (torch.randn(128, 256, generator=g).to(device) for _ in range(4))
    for recipe in RECIPES:
        together = _layer(recipe, device)
        a1, a2 = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
        ((together(a1) * dy1).sum() + (together(a2) * dy2).sum()).backward()
        alone = _layer(recipe, device)
        dx1, dw1, db1 = _grads(alone, x1, dy1)
        dx2, dw2, db2 = _grads(alone, x2, dy2)
        out[f"layer called twice == the two calls one by one ({recipe})"] = _same(
            [a1.grad, a2.grad, together.weight.grad], [dx1, dx2, dw1 + dw2]
        )
    return out


def check_needs_input_grad(device: str) -> dict[str, bool]:
    out = {}
    real = linear_module.quantized_matmul
    calls = []
    linear_module.quantized_matmul = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        for recipe in RECIPES:
            layer = _layer(recipe, device)
            calls.clear()
            layer(torch.randn(128, 256, device=device)).backward(torch.randn(128, 256, device=device))
            no_dgrad = len(calls) == 2 and layer.weight.grad is not None
            layer.weight.requires_grad_(False)
            calls.clear()
            x = torch.randn(128, 256, device=device, requires_grad=True)
            layer(x).backward(torch.randn(128, 256, device=device))
            out[f"no Dgrad without an input gradient, no Wgrad for a frozen weight ({recipe})"] = (
                no_dgrad and len(calls) == 2 and x.grad is not None
            )
    finally:
        linear_module.quantized_matmul = real
    return out


def check_in_place_and_offloading(device: str) -> dict[str, bool]:
    out = {}
    layer = _layer("nvfp4", device)
    layer.high_precision = frozenset({"wgrad"})
    h = torch.randn(128, 256, device=device)
    y = layer(h)
    h.mul_(0)
    try:
        y.sum().backward()
        caught = False
    except RuntimeError as e:
        caught = "inplace" in str(e)
    out["input changed in place after forward fails backward (Wgrad in bf16)"] = caught
    x, dy = torch.randn(128, 256, device=device), torch.randn(128, 256, device=device)
    for recipe in RECIPES:
        plain = _grads(_layer(recipe, device), x, dy)
        layer = _layer(recipe, device)
        xg = x.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: (t.device, t.cpu()), lambda p: p[1].to(p[0])):
            y = layer(xg)
        y.backward(dy)
        out[f"saved_tensors_hooks offloading to the CPU, same gradients ({recipe})"] = _same(
            plain, [xg.grad, layer.weight.grad, layer.bias.grad]
        )
    return out


def check_cuda_graph_two_calls() -> dict[str, bool]:
    """A layer applied twice per step (shared weights), eager against graphed, three AdamW steps."""
    x = torch.randn(512, 1024, device="cuda")
    out = {}
    for recipe in RECIPES:
        runs = []
        for graphed in (False, True):
            layer = _layer(recipe, "cuda", n=1024)
            losses, params = train_steps(nn.Sequential(layer, nn.GELU(), layer), x, graphed)
            runs.append((losses, params, int(layer.sr_step)))
        (l0, p0, c0), (l1, p1, c1) = runs
        out[f"CUDA graph == eager, one layer called twice per step, 3 AdamW steps ({recipe})"] = (
            l0 == l1 and c0 == c1 == 6 and _same(p0, p1)
        )
    return out


def time_layer(device: str) -> list[tuple[str, float]]:
    """ms per forward + backward of a 4096×4096 layer on 8192 bf16 tokens, with and without the
    input's gradient (a first layer: no Dgrad)."""
    rows = []
    x = torch.randn(8192, 4096, device=device, dtype=torch.bfloat16)
    dy = torch.randn(8192, 4096, device=device, dtype=torch.bfloat16)
    for recipe in ("nvfp4", "mxfp4"):
        layer = QuantLinear(4096, 4096, recipe=recipe, device=device)
        for needs_grad in (True, False):
            xs = x.clone().requires_grad_(needs_grad)

            def step() -> None:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    y = layer(xs)
                y.backward(dy)

            for _ in range(3):
                step()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(20):
                step()
            torch.cuda.synchronize()
            rows.append((f"{recipe} fwd+bwd, input {'with' if needs_grad else 'without'} grad", (time.perf_counter() - t) / 20 * 1e3))
    return rows


def checks(device: str) -> dict[str, bool]:
    """Every check that runs on ``device`` (the CUDA-graph one on a GPU only)."""
    res = {}
    for check in (check_fresh_sr_bits, check_two_calls, check_needs_input_grad, check_in_place_and_offloading):
        res.update(_run(check, device))
    if device == "cuda":
        res.update(_run(lambda _: check_cuda_graph_two_calls(), device, "check_cuda_graph_two_calls"))
    return res


def _run(check, device: str, name: str | None = None) -> dict[str, bool]:
    """``check(device)``, or one failed row naming the exception it raised."""
    try:
        return check(device)
    except Exception as e:  # report and go on with the other checks
        return {f"{name or check.__name__} raised {e!r}"[:300]: False}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu")
    res = checks(args.device)
    print("| check | result |\n|---|---|")
    for name, ok in res.items():
        print(f"| {name} | {'pass' if ok else 'FAIL'} |")
    if args.device == "cuda":
        print(f"\n{torch.cuda.get_device_name()}\n\n| layer | ms |\n|---|---|")
        for name, ms in time_layer(args.device):
            print(f"| {name} | {ms:.2f} |")
    print(f"\n{sum(res.values())}/{len(res)} checks pass")
    if not all(res.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
