"""Nemotron-H-style hybrid language model built from a layer pattern string.

Sources: Nemotron-H (NVIDIA, arXiv 2504.03624) and HF ``modeling_nemotron_h``: every layer is
``x + Mixer(RMSNorm(x))`` with one mixer per pattern character — ``M`` Mamba-2 (models/mamba2.py),
``*`` attention, ``-`` MLP — then a final RMSNorm and an untied ``lm_head`` without bias.

- Attention: grouped-query (Ainslie et al. 2023, arXiv 2305.13245), causal, scale head_dim^-0.5,
  no biases, no position embeddings (as Nemotron-H); RoPE (Su et al., arXiv 2104.09864) optional.
- MLP: ``down(relu(up(x))^2)`` (squared ReLU, So et al. "Primer", arXiv 2109.08668), no gate, no bias.
- Init: embeddings N(0, 0.02); Mamba ``out_proj`` rescaled by 1/sqrt(n_layers) (prenorm-residual
  rescale, GPT-2 §2.3 / mamba_ssm ``_init_weights``); other Linears keep PyTorch's default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mamba2 import Mamba2Mixer, RMSNorm
from .mamba_ssm_ops import check_ssd_impl

MIXER_CHARS = {"M": "mamba", "*": "attention", "-": "mlp"}


@dataclass
class HybridLMConfig:
    """Sizes of a hybrid LM. Derived widths: FFN = ffn_dim or 4·d_model; attention head dim =
    attn_head_dim or d_model / n_heads; Mamba heads = mamba_expand·d_model / mamba_head_dim.

    ``n_layers`` (optional) repeats or truncates ``pattern`` to that many layers. ``ssd_impl``
    (auto | torch | triton), ``fused_gated_norm`` and ``fused_causal_conv`` pick the Mamba-2 kernels
    (``Mamba2Mixer``).
    """

    pattern: str = "M-M-M*-M-"
    d_model: int = 128
    n_layers: int | None = None
    vocab_size: int = 256
    ffn_dim: int | None = None
    n_heads: int = 4
    n_kv_heads: int = 2
    attn_head_dim: int | None = None
    rope: bool = False
    rope_theta: float = 10000.0
    mamba_expand: int = 2
    mamba_head_dim: int = 8
    mamba_n_groups: int = 2
    mamba_d_state: int = 32
    mamba_d_conv: int = 4
    mamba_chunk_size: int = 64
    norm_eps: float = 1e-5
    init_std: float = 0.02
    ssd_impl: str = "auto"
    fused_gated_norm: bool = True
    fused_causal_conv: bool = True

    def __post_init__(self) -> None:
        check_ssd_impl(self.ssd_impl)
        bad = sorted(set(self.pattern) - set(MIXER_CHARS))
        if not self.pattern or bad:
            raise ValueError(
                f"pattern {self.pattern!r} has invalid characters {bad}; valid: "
                + ", ".join(f"{c!r} ({m})" for c, m in MIXER_CHARS.items())
            )
        if self.n_layers is not None and self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1 or None, got {self.n_layers}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.attn_head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if (self.mamba_expand * self.d_model) % self.mamba_head_dim:
            raise ValueError(
                f"mamba d_inner = {self.mamba_expand}*{self.d_model} is not divisible by "
                f"mamba_head_dim {self.mamba_head_dim}"
            )
        if self.rope and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even attention head dim, got {self.head_dim}")

    @property
    def layer_pattern(self) -> str:
        """The pattern actually built: ``pattern`` cycled to ``n_layers`` characters if given."""
        if self.n_layers is None:
            return self.pattern
        reps = -(-self.n_layers // len(self.pattern))
        return (self.pattern * reps)[: self.n_layers]

    @property
    def head_dim(self) -> int:
        return self.attn_head_dim or self.d_model // self.n_heads

    @property
    def mamba_n_heads(self) -> int:
        return self.mamba_expand * self.d_model // self.mamba_head_dim

    def summary(self) -> str:
        return (
            f"`{self.layer_pattern}`, d {self.d_model}, FFN {self.ffn_dim or 4 * self.d_model}, "
            f"attn {self.n_heads}/{self.n_kv_heads}×{self.head_dim}, "
            f"Mamba H {self.mamba_n_heads}×P {self.mamba_head_dim}, G {self.mamba_n_groups}, "
            f"N {self.mamba_d_state}, vocab {self.vocab_size}"
        )


class Attention(nn.Module):
    """Causal grouped-query self-attention; KV heads repeated to the query heads for SDPA."""

    def __init__(self, cfg: HybridLMConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.rope_theta = cfg.rope_theta if cfg.rope else None

    def forward(self, x: Tensor) -> Tensor:
        b, l, _ = x.shape
        q = self.q_proj(x).view(b, l, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, l, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, l, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.rope_theta is not None:
            q, k = apply_rope(q, self.rope_theta), apply_rope(k, self.rope_theta)
        rep = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, l, -1))


def apply_rope(x: Tensor, theta: float) -> Tensor:
    """Rotary embedding (RoFormer eq. 34, rotate-half layout) on x (b, heads, l, head_dim)."""
    l, d = x.shape[-2], x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = torch.outer(torch.arange(l, device=x.device, dtype=torch.float32), inv_freq)
    cos, sin = angles.cos().repeat(1, 2).to(x.dtype), angles.sin().repeat(1, 2).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class MLP(nn.Module):
    """``down(relu(up(x))^2)``."""

    def __init__(self, cfg: HybridLMConfig) -> None:
        super().__init__()
        ffn = cfg.ffn_dim or 4 * cfg.d_model
        self.up_proj = nn.Linear(cfg.d_model, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.relu(self.up_proj(x)).square())


class HybridBlock(nn.Module):
    """One layer: ``x + mixer(RMSNorm(x))``; ``kind`` is the pattern character."""

    def __init__(self, kind: str, cfg: HybridLMConfig) -> None:
        super().__init__()
        self.kind = kind
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        if kind == "M":
            self.mixer: nn.Module = Mamba2Mixer(
                cfg.d_model,
                n_heads=cfg.mamba_n_heads,
                head_dim=cfg.mamba_head_dim,
                n_groups=cfg.mamba_n_groups,
                d_state=cfg.mamba_d_state,
                d_conv=cfg.mamba_d_conv,
                chunk_size=cfg.mamba_chunk_size,
                ssd_impl=cfg.ssd_impl,
                fused_gated_norm=cfg.fused_gated_norm,
                fused_causal_conv=cfg.fused_causal_conv,
            )
        elif kind == "*":
            self.mixer = Attention(cfg)
        else:
            self.mixer = MLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mixer(self.norm(x))


class HybridLM(nn.Module):
    """Token ids (b, l) int64 -> logits (b, l, vocab_size)."""

    def __init__(self, cfg: HybridLMConfig) -> None:
        super().__init__()
        self.config = cfg
        pattern = cfg.layer_pattern
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(HybridBlock(kind, cfg) for kind in pattern)
        self.norm_f = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=cfg.init_std)
        with torch.no_grad():
            for block in self.blocks:
                if isinstance(block.mixer, Mamba2Mixer):
                    block.mixer.out_proj.weight.div_(math.sqrt(len(pattern)))

    def forward(self, idx: Tensor) -> Tensor:
        x = self.embedding(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm_f(x))


# Named sizes; parameters with the byte vocabulary (256), embedding and lm_head included:
# micro 1,124,480; tiny 18,044,416; small 123,213,536; base 367,165,408; 1b 1,115,442,368.
# small/base/1b follow Nemotron-H's layout (`M-M-M-M*-` groups ending `M-`, arXiv 2504.03624) with
# its attention head dim 128 (base, 1b), Mamba head dim 64, G = 8 groups and state N = 128 (as its
# 8B/12B); base is 47 layers (21 M / 21 - / 5 *) at d 1024, 1b 38 layers (17 / 17 / 4) at d 2048.
SIZES: dict[str, dict] = {
    "micro": {},
    "tiny": dict(
        pattern="M-M-M-M*-M-M-M-M-", d_model=384, n_heads=6, n_kv_heads=2,
        mamba_head_dim=24, mamba_n_groups=2, mamba_d_state=64, mamba_chunk_size=128,
    ),
    "small": dict(
        pattern="M-M-M-M*-" * 3 + "M-", d_model=768, n_heads=12, n_kv_heads=4,
        mamba_head_dim=48, mamba_n_groups=4, mamba_d_state=128, mamba_chunk_size=256,
    ),
    "base": dict(
        pattern="M-M-M-M*-" * 5 + "M-", d_model=1024, n_heads=8, n_kv_heads=2, attn_head_dim=128,
        mamba_head_dim=64, mamba_n_groups=8, mamba_d_state=128, mamba_chunk_size=256,
    ),
    "1b": dict(
        pattern="M-M-M-M*-" * 4 + "M-", d_model=2048, n_heads=16, n_kv_heads=4, attn_head_dim=128,
        mamba_head_dim=64, mamba_n_groups=8, mamba_d_state=128, mamba_chunk_size=256,
    ),
}
