"""``model=hf`` on a GPU: transformers models trained through ``python -m fp4train.train``.

    PYTHONUNBUFFERED=1 python -m experiments.bench.hf_gpu_check [--steps 20] [--cases NAME ...] [--out DIR]

Cases (each one run of the entry point, ``logger=csv``, first and last block BF16):

* ``llama_bf16``, ``llama_nvfp4``: a Llama-shaped model (d 512, 8 layers, GQA 8/4 heads, SwiGLU
  1536, byte vocabulary) on the standard-library bytes, 16 × 256 tokens a step;
* ``llama_nvfp4_graph``: the same NVFP4 run with ``trainer.cuda_graph=true`` (GPU only);
* ``nemotron_h_nvfp4``: a Nemotron-H-shaped model (``M-M*-M-M*-``, d 512) under NVFP4 —
  transformers' PyTorch Mamba path unless mamba_ssm is installed (then the run must refuse:
  mamba_ssm's fused kernel multiplies by ``out_proj.weight`` itself).

Prints each run's losses, throughput and a PASS/FAIL line: finite losses that fall; NVFP4's last
loss within 10% of BF16's; the graphed run's losses within 1% of the eager run's (an LM's graphed
step runs other PyTorch kernels than its eager step: docs/training.md, CUDA graphs; on an H200 the
Llama's differed by 5e-3 in absolute loss, which a 1e-3 bound wrongly failed).
``--smoke`` shrinks the models and batch for a CPU check of the script itself.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

LLAMA = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 8,
         "num_key_value_heads": 4}
NEMOTRON_H = {"hybrid_override_pattern": "M-M*-M-M*-", "hidden_size": 512, "intermediate_size": 1536,
              "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64, "mamba_num_heads": 16,
              "mamba_head_dim": 64, "n_groups": 2, "ssm_state_size": 64, "chunk_size": 64}
SMOKE = {"hidden_size": 64, "intermediate_size": 128, "mamba_num_heads": 16, "mamba_head_dim": 8,
         "ssm_state_size": 16, "head_dim": 16, "num_attention_heads": 4, "num_key_value_heads": 2}
GRAPH_TOLERANCE = 0.01  # relative, per logged step
CASES = {  # name: (model_type, config, quant, cuda_graph)
    "llama_bf16": ("llama", LLAMA, "bf16", False),
    "llama_nvfp4": ("llama", LLAMA, "nvfp4", False),
    "llama_nvfp4_graph": ("llama", LLAMA, "nvfp4", True),
    "nemotron_h_nvfp4": ("nemotron_h", NEMOTRON_H, "nvfp4", False),
}


def overrides(name: str, steps: int, smoke: bool) -> list[str]:
    """The entry point's overrides of case ``name``."""
    model_type, config, quant, graphed = CASES[name]
    if smoke:
        config = {k: SMOKE.get(k, v) for k, v in config.items()}
    batch, seq = (4, 32) if smoke else (16, 256)
    return [
        "model=hf", f"model.hf.model_type={model_type}", *(f"+model.hf.config.{k}={v}" for k, v in config.items()),
        f"quant={quant}", "quant.bf16_first_blocks=1", "quant.bf16_last_blocks=1",
        f"data.batch_size={batch}", f"data.options.seq_len={seq}", "data.options.val_samples=16",
        f"trainer.max_steps={steps}", f"trainer.val_every_n_steps={steps}", "trainer.val_batches=1",
        f"trainer.cuda_graph={str(graphed).lower()}", "optim.warmup_steps=2", "logger=csv",
        "logger.quant_stats_every_n_steps=10", "trainer.enable_progress_bar=false", f"study=hf_gpu_check_{name}",
    ]


def run(name: str, steps: int, smoke: bool, out: Path) -> dict:
    """One run; its status, losses by step, median throughput and a quantized layer's logged QSNR."""
    cmd = [sys.executable, "-m", "fp4train.train", *overrides(name, steps, smoke), f"hydra.run.dir={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    result = {"name": name, "rc": done.returncode, "cmd": " ".join(cmd[1:]), "loss": {}, "tail": done.stderr[-1500:]}
    if done.returncode or not (out / "csv" / "metrics.csv").is_file():
        return result
    rows = list(csv.DictReader(open(out / "csv" / "metrics.csv")))
    result["loss"] = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    result["val"] = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    speed = [float(r["train/tokens_per_s"]) for r in rows if r.get("train/tokens_per_s")]
    result["tokens_per_s"] = statistics.median(speed[1:] or speed)
    result["qsnr"] = [float(v) for r in rows for k, v in r.items() if k.endswith("x_qsnr_db") and v]
    result["conversion"] = (out / "conversion.md").read_text().splitlines()[0]
    return result


def verdict(r: dict, results: dict[str, dict]) -> str:
    loss = list(r["loss"].values())
    if r["rc"] or not loss:
        return f"FAIL (rc {r['rc']})"
    if not all(map(math.isfinite, loss)) or loss[-1] >= loss[0]:
        return "FAIL (non-finite or not falling)"
    if "nvfp4" in r["name"] and not r["qsnr"]:
        return "FAIL (no quant stats logged)"
    base = results.get("llama_bf16")
    if r["name"].startswith("llama_nvfp4") and base and base["loss"]:
        gap = loss[-1] / list(base["loss"].values())[-1] - 1
        if abs(gap) > 0.10:
            return f"FAIL (last loss {gap:+.1%} from bf16)"
    eager = results.get("llama_nvfp4")
    if r["name"] == "llama_nvfp4_graph" and eager and eager["loss"]:
        diff = max(abs(a / eager["loss"].get(s, math.nan) - 1) for s, a in r["loss"].items())
        if not diff <= GRAPH_TOLERANCE:
            return f"FAIL (graphed loss differs from eager by {diff:.2%})"
    return "PASS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--out", type=Path, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--smoke", action="store_true", help="tiny models and batch (a CPU check of this script)")
    args = parser.parse_args()
    import transformers

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "CPU"
    fast = {p: importlib.util.find_spec(p) is not None for p in ("mamba_ssm", "causal_conv1d")}
    print(f"{device}, torch {torch.__version__}, transformers {transformers.__version__}, {fast}", flush=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="hf_gpu_check_"))
    results: dict[str, dict] = {}
    for name in args.cases:
        if CASES[name][3] and not cuda:
            print(f"{name}: skipped (trainer.cuda_graph needs a GPU)", flush=True)
            continue
        r = results[name] = run(name, args.steps, args.smoke, out / name)
        r["verdict"] = verdict(r, results)
        loss = r["loss"]
        picked = {s: round(loss[s], 4) for s in sorted(loss) if s in (0, 5, 10) or s == max(loss)}
        print(f"\n{name}: {r['verdict']}\n  {r['cmd']}", flush=True)
        if loss:
            print(f"  {r['conversion']}\n  train loss {picked}; val {[round(v, 4) for v in r['val']]}; "
                  f"{r['tokens_per_s']:,.0f} tokens/s; x QSNR dB {[round(q, 1) for q in r['qsnr'][:3]]}", flush=True)
        else:
            print("  stderr tail:\n" + r["tail"], flush=True)
    failed = [n for n, r in results.items() if r["verdict"] != "PASS"]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed" + (f": {failed}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
