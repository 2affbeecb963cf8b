"""Hybrid LM: causality, shapes, pattern handling, attention, init, and that it learns."""

import math

import pytest
import torch
import torch.nn.functional as F

from fp4train.models import HybridLMConfig, build_model
from fp4train.models.hybrid_lm import Attention
from fp4train.models.mamba2 import Mamba2Mixer


@pytest.mark.parametrize("rope", [False, True])
def test_changing_token_t_changes_no_logit_before_t(rope):
    torch.manual_seed(0)
    model = build_model("hybrid_lm", rope=rope, mamba_chunk_size=8).double()
    idx = torch.randint(0, 256, (2, 29))
    t = 17
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 256
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-12)
    assert (a[:, t:] - b[:, t:]).abs().amax() > 1e-6


def test_forward_and_backward_shapes():
    model = build_model("hybrid_lm", vocab_size=512)
    idx = torch.randint(0, 512, (3, 40))
    logits = model(idx)
    assert logits.shape == (3, 40, 512)
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_a_few_steps_of_training_reduce_loss():
    torch.manual_seed(0)
    model = build_model("hybrid_lm")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    text = torch.tensor(list(b"def add(a, b):\n    return a + b\n" * 4))[:96]
    x, y = text[None, :-1].repeat(4, 1), text[None, 1:].repeat(4, 1)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_blocks_follow_the_pattern_and_n_layers_cycles_it():
    model = build_model("hybrid_lm", pattern="M*-")
    assert [b.kind for b in model.blocks] == ["M", "*", "-"]
    assert [type(b.mixer).__name__ for b in model.blocks] == ["Mamba2Mixer", "Attention", "MLP"]
    assert HybridLMConfig(pattern="M*-", n_layers=7).layer_pattern == "M*-M*-M"
    assert HybridLMConfig(pattern="M-M-M*-M-", n_layers=4).layer_pattern == "M-M-"


def test_invalid_pattern_error_names_the_valid_characters():
    with pytest.raises(ValueError, match=r"invalid characters \['x'\].*'M' \(mamba\)"):
        HybridLMConfig(pattern="M-x")


def test_gqa_attention_equals_explicit_causal_softmax():
    torch.manual_seed(0)
    cfg = HybridLMConfig(d_model=64, n_heads=4, n_kv_heads=2)
    attn = Attention(cfg).double()
    x = torch.randn(2, 9, 64, dtype=torch.float64)
    q = attn.q_proj(x).view(2, 9, 4, 16).transpose(1, 2)
    k = attn.k_proj(x).view(2, 9, 2, 16).transpose(1, 2)
    v = attn.v_proj(x).view(2, 9, 2, 16).transpose(1, 2)
    k, v = k[:, [0, 0, 1, 1]], v[:, [0, 0, 1, 1]]  # query heads 0,1 share KV head 0
    scores = q @ k.transpose(-1, -2) / math.sqrt(16)
    scores = scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), -torch.inf)
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 9, 64)
    torch.testing.assert_close(attn(x), attn.o_proj(y))


def test_init_embeddings_std_002_and_mamba_out_proj_rescaled():
    torch.manual_seed(0)
    model = build_model("hybrid_lm", d_model=128, vocab_size=4096)
    assert abs(model.embedding.weight.std().item() - 0.02) < 1e-3
    bound = 1 / math.sqrt(model.config.mamba_expand * 128)  # PyTorch's default Linear bound
    n_layers = len(model.blocks)
    for block in model.blocks:
        if isinstance(block.mixer, Mamba2Mixer):
            assert block.mixer.out_proj.weight.abs().max() <= bound / math.sqrt(n_layers)
            assert block.mixer.out_proj.weight.abs().max() > 0.9 * bound / math.sqrt(n_layers)
