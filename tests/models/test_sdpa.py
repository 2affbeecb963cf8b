"""Both models' attention is one ``F.scaled_dot_product_attention`` call that SDPA's flash kernel
accepts: no explicit mask (the LM's causality through ``is_causal``), query/key/value in the
autocast dtype with a contiguous last dimension. (On the GPU, ``experiments/bench/ssd_check.py``
runs the blocks with only the flash backend allowed.)"""

import pytest
import torch
import torch.nn.functional as F

from fp4train.models import build_model

SDPA = F.scaled_dot_product_attention


def _record(monkeypatch, module_path):
    calls = []

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        calls.append({"dtypes": {q.dtype, k.dtype, v.dtype}, "mask": attn_mask, "is_causal": is_causal,
                      "last_dim_contiguous": all(t.stride(-1) == 1 for t in (q, k, v)), "kwargs": kwargs})
        return SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(f"{module_path}.F.scaled_dot_product_attention", sdpa)
    return calls


@pytest.mark.parametrize("name, overrides, x, causal", [
    ("hybrid_lm", {"pattern": "*"}, torch.randint(0, 256, (2, 16)), True),
    ("hybrid_lm", {"pattern": "*", "rope": True}, torch.randint(0, 256, (2, 16)), True),
    ("vit", {"depth": 1}, torch.randn(2, 1, 8, 8), False),
])
def test_attention_is_one_flash_eligible_sdpa_call_in_the_autocast_dtype(monkeypatch, name, overrides, x, causal):
    calls = _record(monkeypatch, f"fp4train.models.{name}")
    model = build_model(name, "micro", **overrides)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert calls == [{"dtypes": {torch.bfloat16}, "mask": None, "is_causal": causal, "last_dim_contiguous": True, "kwargs": {}}]
