"""Figures of a kernel benchmark result (``bench.json`` of ``experiments.bench.run``): each
quantizer's share of the copy bandwidth against issue 6's 80% target, each linear layer's GPU time
against bf16 ``nn.Linear`` (issue 6's targets: at most 1.25× for NVFP4, below 1.0× for MXFP4 on
FP8 tensor cores), and
the quantize times of ours and of the peers. Parts a run skipped are left out.

``python -m experiments.bench.plot RESULT.json [--out FIG.png]`` (default: beside the JSON);
``run.py`` writes ``bench.png`` itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["plot_bench"]

QUANTIZE_TARGET = 0.8  # of copy bandwidth (issue 6)
LINEAR_TARGETS = {"NVFP4 target ≤ 1.25×": 1.25, "bf16; MXFP4 on FP8 TC target < 1×": 1.0}


def _panels(res: dict) -> list[str]:
    peers = [r for r in res.get("peers", []) if "unavailable" not in r]
    return [name for name, rows in (("quantize", res.get("quantize")), ("linear", res.get("linear")), ("peers", peers)) if rows]


def plot_bench(res: dict, path: Path) -> Path | None:
    """Write the figure of ``res`` (a ``run.py`` result) to ``path``; ``None`` if it has no
    quantize, linear or peer rows."""
    panels = _panels(res)
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [0.6 if p == "peers" else 1.0 for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * sum(widths), 6), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, panel in zip(axes[0], panels):
        {"quantize": _quantize, "linear": _linear, "peers": _peers}[panel](ax, res)
    env = res.get("environment", {})
    fig.suptitle(f"{env.get('gpu', '?')}, torch {env.get('torch', '?')}, Triton {env.get('triton', '?')}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _quantize(ax, res: dict) -> None:
    rows = res["quantize"]
    names = [r["variant"] for r in rows]
    ax.barh(names, [r["frac_copy_bw"] for r in rows], label="x read once + codes, scales")
    given = [r for r in rows if "frac_copy_bw_amax_given" in r]
    ax.scatter([r["frac_copy_bw_amax_given"] for r in given], [r["variant"] for r in given], marker="|", s=200,
               color="k", label="NVFP4, amax given", zorder=3)
    ax.axvline(QUANTIZE_TARGET, color="r", ls="--", label=f"target {QUANTIZE_TARGET:.0%}")
    ax.set_xlabel(f"fraction of copy bandwidth ({res.get('copy_GBs', 0):.0f} GB/s), bf16 8192×4096")
    ax.invert_yaxis()
    ax.set_xlim(0, 1.3)  # room right of the target for the legend
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("quantize")


def _linear(ax, res: dict) -> None:
    rows = res["linear"]
    names = [r["linear"].replace(" fwd+bwd", "").replace("nn.Linear, FP32 weights, bf16 autocast", "autocast nn.Linear")
             for r in rows]
    ax.barh(names, [1 / r["vs_bf16_gpu"] for r in rows])
    for label, x in LINEAR_TARGETS.items():
        ax.axvline(x, color="r" if x != 1.0 else "k", ls="--", lw=1, label=label)
    ax.set_xlabel("GPU time ÷ bf16 nn.Linear of the same shape")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("linear layer, forward + backward")


def _peers(ax, res: dict) -> None:
    rows = [r for r in res["peers"] if "unavailable" not in r]
    keys = {"ours (GPU)": "ours_gpu_ms", "peer eager (GPU)": "gpu_ms", "peer torch.compile (GPU)": "compiled_gpu_ms"}
    width = 0.8 / len(keys)
    for i, (label, key) in enumerate(keys.items()):
        ax.bar([j + i * width for j in range(len(rows))], [r.get(key, float("nan")) * 1e3 for r in rows], width, label=label)
    ax.set_xticks([j + width for j in range(len(rows))], [r["peer"].split(" (")[0].split(".")[-1] for r in rows], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("µs, bf16 8192×4096, one orientation")
    ax.legend(fontsize=8, loc="upper center")
    ax.set_ylim(top=ax.get_ylim()[1] * 4)
    ax.set_title("quantize vs torchao")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("result", type=Path, help="bench.json of experiments.bench.run")
    p.add_argument("--out", type=Path, help="figure path (default: RESULT with .png)")
    args = p.parse_args()
    out = plot_bench(json.loads(args.result.read_text()), args.out or args.result.with_suffix(".png"))
    print(out or f"{args.result}: no quantize, linear or peer rows to plot")


if __name__ == "__main__":
    main()
