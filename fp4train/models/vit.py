"""DeiT-style Vision Transformer.

Sources: Dosovitskiy et al., "An Image is Worth 16x16 Words" (ViT, arXiv 2010.11929) §3.1 eq. 1-4;
Touvron et al., "Training data-efficient image transformers" (DeiT, arXiv 2012.12877) for the
Ti/S sizes and the init (timm: truncated normal std 0.02, zero biases).

    z_0 = [cls; patches · E] + pos
    z'_l = z_{l-1} + MSA(LN(z_{l-1}))
    z_l  = z'_l + MLP(LN(z'_l))          MLP = fc2(GELU(fc1(·))), ratio 4
    logits = head(LN(z_L)[cls])

The patch embedding is a strided Conv2d kept outside ``blocks``; every GEMM inside a block is an
``nn.Linear`` (qkv with bias, proj, fc1, fc2), as is ``head``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ViTConfig:
    """ViT sizes and input geometry; ``image_size`` must be a multiple of ``patch_size``."""

    image_size: int = 8
    patch_size: int = 2
    in_channels: int = 1
    num_classes: int = 10
    dim: int = 64
    depth: int = 4
    n_heads: int = 2
    mlp_ratio: int = 4
    qkv_bias: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def summary(self) -> str:
        return (
            f"dim {self.dim}, depth {self.depth}, heads {self.n_heads}, "
            f"{self.in_channels}×{self.image_size}² / patch {self.patch_size}, {self.num_classes} classes"
        )


class Attention(nn.Module):
    """Multi-head self-attention (no mask), scale head_dim^-0.5."""

    def __init__(self, dim: int, n_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (ViT eq. 2-3)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.attn = Attention(cfg.dim, cfg.n_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp = MLP(cfg.dim, cfg.mlp_ratio * cfg.dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Images (b, C, H, W) -> logits (b, num_classes)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches + 1, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        nn.init.trunc_normal_(self.cls_token, std=cfg.init_std)
        nn.init.trunc_normal_(self.pos_embed, std=cfg.init_std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=cfg.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> Tensor:
        c, s = self.config.in_channels, self.config.image_size
        if images.shape[1:] != (c, s, s):
            raise ValueError(f"ViT expects images (b, {c}, {s}, {s}), got {tuple(images.shape)}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


SIZES: dict[str, dict] = {
    "micro": {},
    "tiny": dict(image_size=32, patch_size=4, in_channels=3, dim=192, depth=12, n_heads=3),
    "small": dict(image_size=32, patch_size=4, in_channels=3, dim=384, depth=12, n_heads=6),
}
