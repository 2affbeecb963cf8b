"""Model FLOPs of a training step, for the benchmark's MFU (model FLOPs per second over the GPU's
dense bf16 peak; PaLM, Chowdhery et al. 2022, App. B).

Counted: the matmul FLOPs (2 per multiply-add) of every product the model defines, forward, times
3 for forward + backward (each product's backward is two products of its size: the input and the
weight gradient):

* every ``nn.Linear`` (quantized or not; ``lm_head`` and the ViT ``head`` included) on every
  token it sees: 2·N_linear FLOPs per token forward, so the familiar 6·N_linear per token;
* the ViT's patch embedding (a strided convolution: a linear map per patch);
* attention, QKᵀ and PV over the query-key pairs attended: all n² pairs in the ViT,
  the l(l+1)/2 causal pairs in the LM (what a causal flash kernel computes) — forward
  4·head_dim·heads FLOPs per pair;
* the Mamba-2 SSD scan as chunked in Mamba-2 §6 (chunk Q), per token and layer, forward: the
  chunk states ``Σ B_t x_tᵀ`` (2·H·P·N) and their read-out ``C_t h`` (2·H·P·N), and within each
  chunk ``C Bᵀ`` per group (N·G·(Q+1): over its Q(Q+1)/2 causal pairs) and its product with x per
  head (P·H·(Q+1)).

Not counted: element-wise and reduction work (norms, activations, softmax, the causal conv1d, the
scan's decays and cumulative sums), the embedding lookup and the optimizer step.
"""

from __future__ import annotations

from torch import nn

from fp4train.models import HybridLM, ViT

__all__ = ["linear_params", "train_flops"]


def linear_params(model: nn.Module) -> int:
    """Weights of every ``nn.Linear`` (``QuantLinear`` is one) in ``model``."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def _hybrid_lm_forward(model: HybridLM, seq: int) -> dict[str, float]:
    """Forward FLOPs of one sequence of ``seq`` tokens, per part."""
    c = model.config
    pattern = c.layer_pattern
    pairs = seq * (seq + 1) / 2
    heads, p, g, n, q = c.mamba_n_heads, c.mamba_head_dim, c.mamba_n_groups, c.mamba_d_state, c.mamba_chunk_size
    ssd_per_token = 4 * heads * p * n + n * g * (q + 1) + p * heads * (q + 1)
    return {
        "linear": 2 * linear_params(model) * seq,
        "attention": pattern.count("*") * 4 * c.head_dim * c.n_heads * pairs,
        "ssd": pattern.count("M") * ssd_per_token * seq,
    }


def _vit_forward(model: ViT) -> dict[str, float]:
    """Forward FLOPs of one image, per part (``head`` sees only the class token)."""
    c = model.config
    tokens = c.n_patches + 1
    blocks = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, nn.Linear))
    return {
        "linear": 2 * blocks * tokens + 2 * model.head.weight.numel() + 2 * model.patch_embed.weight.numel() * c.n_patches,
        "attention": c.depth * 4 * c.dim * tokens**2,
        "ssd": 0.0,
    }


def train_flops(model: nn.Module, batch: int, seq: int | None = None) -> dict[str, float]:
    """Training-step FLOPs (forward + backward = 3 × forward) of ``batch`` sequences of ``seq``
    tokens (hybrid LM) or ``batch`` images (ViT): per part and ``"total"`` (module doc)."""
    if isinstance(model, HybridLM):
        if seq is None:
            raise ValueError("train_flops of a hybrid LM needs seq (tokens per sequence)")
        parts = _hybrid_lm_forward(model, seq)
    elif isinstance(model, ViT):
        parts = _vit_forward(model)
    else:
        raise ValueError(f"train_flops counts HybridLM and ViT, got {type(model).__name__}")
    parts = {k: 3 * batch * v for k, v in parts.items()}
    return {**parts, "total": sum(parts.values())}
