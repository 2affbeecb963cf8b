"""QuantLinear: exactness against nn.Linear (bf16), against an independent fake-quantize
computation in float64 (nvfp4, mxfp4), measured SR unbiasedness, RHT cancellation, memory."""

from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from fp4train import QuantSpec, fake_quantize
import fp4train.linear as linear_module
from fp4train.linear import QuantLinear
from fp4train.quant import quantize, stream_seed, transpose
from fp4train.recipes import OPERANDS, RecipeConfig, build_recipe

BF16 = QuantSpec("bf16")


def make_pair(in_f=64, out_f=48, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    return lin, lin.weight.detach().clone(), (lin.bias.detach().clone() if bias else None)


def run(layer, x, dy):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(dy)
    return y.detach(), x.grad, layer.weight.grad, (layer.bias.grad if layer.bias is not None else None)


def test_bf16_recipe_equals_nn_linear_exactly():
    lin, w, b = make_pair()
    q = QuantLinear.from_linear(make_pair()[0], build_recipe("bf16"))
    x, dy = torch.randn(3, 5, 64), torch.randn(3, 5, 48)
    for a, c in zip(run(lin, x, dy), run(q, x, dy)):
        assert torch.equal(a, c)


def test_bf16_recipe_equals_nn_linear_under_autocast():
    lin = make_pair()[0]
    q = QuantLinear.from_linear(make_pair()[0], build_recipe("bf16"))
    x, dy = torch.randn(8, 64), torch.randn(8, 48, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ra, rb = run(lin, x, dy), run(q, x, dy)
    for a, c in zip(ra, rb):
        assert a.dtype == c.dtype and torch.equal(a, c)


def reference(recipe, layer_id, step, x, w, b, dy):
    """Straightforward: fake-quantize every operand with the same SR streams, multiply in float64."""

    def fq(operand, t):
        spec = recipe.spec(operand)
        gen = None
        if spec.rounding == "sr":
            key = stream_seed(spec.seed, layer_id, OPERANDS.index(operand))  # the operand's stream, at this step
            gen = torch.Generator().manual_seed(stream_seed(key, step))
        return fake_quantize(t, spec, generator=gen, keep_rht=True).double()

    def pad_tokens(t, spec):  # Wgrad operands are zero-padded along tokens to whole blocks/RHT groups
        mult = max(spec.block_shape[1] if spec.block_shape else 1, spec.rht or 1)
        return torch.nn.functional.pad(t, (0, -t.shape[1] % mult))

    y = fq("x_fprop", x) @ fq("w_fprop", w).T + (b.double() if b is not None else 0)
    x_src = fake_quantize(x, recipe.x_fprop) if recipe.double_quant else x
    dx = fq("dy_dgrad", dy) @ fq("w_dgrad", w.T).T
    dw = fq("dy_wgrad", pad_tokens(dy.T, recipe.dy_wgrad)) @ fq("x_wgrad", pad_tokens(x_src.T, recipe.x_wgrad)).T
    return y, dx, dw


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4", "fp8", "mxfp8"])
@pytest.mark.parametrize("tokens", [64, 40])  # 40: tokens not a multiple of the block
def test_forward_and_gradients_equal_fake_quantize_in_float64(name, tokens):
    recipe = build_recipe(RecipeConfig(name=name, seed=3))
    lin, w, b = make_pair(64, 96)
    q = QuantLinear.from_linear(lin, recipe, layer_id=5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(tokens, 64, generator=g) * torch.exp(torch.randn(tokens, 64, generator=g))
    dy = torch.randn(tokens, 96, generator=g)
    y, dx, dw, _ = run(q, x, dy)
    ry, rdx, rdw = reference(recipe, 5, 1, x, w, b, dy)
    for ours, ref in ((y, ry), (dx, rdx), (dw, rdw)):
        torch.testing.assert_close(ours.double(), ref, rtol=2e-6, atol=2e-6 * ref.abs().max().item())


def test_double_quantization_requantizes_the_forward_operands():
    recipe = replace(build_recipe("mxfp4"), double_quant=True)
    lin, w, b = make_pair(64, 64)
    q = QuantLinear.from_linear(lin, recipe)
    x, dy = torch.randn(32, 64), torch.randn(32, 64)
    _, dx, dw, _ = run(q, x, dy)
    wq = fake_quantize(w, recipe.w_fprop)
    _, rdx, rdw = reference(recipe, 0, 1, x, wq, b, dy)
    torch.testing.assert_close(dx.double(), rdx, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(dw.double(), rdw, rtol=2e-6, atol=1e-6)


def test_2d_weight_scaling_gives_fprop_and_dgrad_identical_weights():
    recipe = build_recipe("nvfp4")
    w = torch.randn(48, 64) * torch.exp(torch.randn(48, 64))
    assert recipe.w_fprop.block_shape == (16, 16)
    assert torch.equal(fake_quantize(w, recipe.w_fprop), fake_quantize(w.T, recipe.w_dgrad).T)
    one_d = build_recipe(RecipeConfig(name="nvfp4", weight_2d=False))
    assert not torch.equal(fake_quantize(w, one_d.w_fprop), fake_quantize(w.T, one_d.w_dgrad).T)


def test_rht_without_quantization_leaves_wgrad_unchanged():
    rht_only = QuantSpec("bf16", rht=16, seed=4, pad=True)
    recipe = replace(build_recipe("bf16"), name="rht-only", dy_wgrad=rht_only, x_wgrad=rht_only)
    lin, _, _ = make_pair(64, 48)
    plain = make_pair(64, 48)[0]
    q = QuantLinear.from_linear(lin, recipe)
    x, dy = torch.randn(40, 64), torch.randn(40, 48)
    _, _, dw_rht, _ = run(q, x, dy)
    _, _, dw, _ = run(plain, x, dy)
    torch.testing.assert_close(dw_rht, dw, rtol=1e-5, atol=1e-5)


def test_sr_gradients_are_unbiased_over_many_steps():
    """Only dy is quantized (NVFP4, SR, RHT on Wgrad): the mean of Dgrad and Wgrad over many
    steps converges on the exact gradients like 1/sqrt(N); RN keeps a fixed bias."""
    base = build_recipe("nvfp4")
    x_rht = QuantSpec("bf16", rht=base.x_wgrad.rht, seed=base.x_wgrad.seed, pad=True)  # same RHT, unquantized
    sr = replace(build_recipe("bf16"), name="dy-sr", dy_dgrad=base.dy_dgrad, dy_wgrad=base.dy_wgrad, x_wgrad=x_rht)
    rn = replace(sr, name="dy-rn", dy_dgrad=replace(base.dy_dgrad, rounding="rn"), dy_wgrad=replace(base.dy_wgrad, rounding="rn"))
    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(64, 64, generator=g), torch.randn(64, 48, generator=g) * torch.exp(torch.randn(64, 48, generator=g))
    lin = make_pair(64, 48)[0]
    exact_dx, exact_dw = dy @ lin.weight.detach(), dy.T @ x

    def mean_grads(recipe, steps):
        q = QuantLinear.from_linear(make_pair(64, 48)[0], recipe)
        dxs, dws = 0, 0
        for _ in range(steps):
            _, dx, dw, _ = run(q, x, dy)
            q.weight.grad = q.bias.grad = None
            dxs, dws = dxs + dx.double(), dws + dw.double()
        return dxs / steps, dws / steps

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    one = mean_grads(sr, 1)
    many = mean_grads(sr, 400)
    rn_err = mean_grads(rn, 1)
    for i, exact in enumerate((exact_dx, exact_dw)):
        single, averaged, biased = rel(one[i], exact), rel(many[i], exact), rel(rn_err[i], exact)
        assert averaged < single / 8  # ~1/sqrt(400) = 1/20 expected
        assert averaged < biased / 4  # RN's error does not average away


def test_saved_tensors_are_packed_not_bf16():
    x = torch.randn(256, 256)
    for name, max_ratio in (("nvfp4", 0.29), ("mxfp4", 0.27), ("fp8", 0.51)):
        q = QuantLinear.from_linear(nn.Linear(256, 256), build_recipe(name))
        q(x.requires_grad_(True)).sum().backward()
        qw = quantize(q.weight.detach(), q.recipe.w_fprop)
        w_bytes = qw.nbytes if q._fprop_weight_serves_dgrad(qw, q.recipe.w_dgrad) else 0  # Fprop's W kept for Dgrad (nvfp4, fp8)
        bf16_bytes = x.numel() * 2
        ratio = (q.saved_bytes - w_bytes) / bf16_bytes
        print(f"{name}: saved {q.saved_bytes - w_bytes} B for x (+ {w_bytes} B for W) vs {bf16_bytes} B in bf16 ({ratio:.3f})")
        assert 0 < ratio <= max_ratio


@pytest.mark.parametrize("name,reuses", [("nvfp4", True), ("fp8", True), ("mxfp4", False), ("nvfp4_1d_w", False),
                                         ("nvfp4_sr_backward", False), ("mxfp4_2d_double_quant", False)])
def test_dgrad_transposes_the_fprop_weight_copy_where_that_is_exact(name, reuses, monkeypatch):
    cfg = {"nvfp4_1d_w": RecipeConfig(name="nvfp4", weight_2d=False),
           "nvfp4_sr_backward": RecipeConfig(name="nvfp4", sr_scope="backward"),
           "mxfp4_2d_double_quant": RecipeConfig(name="mxfp4", weight_2d=True, double_quant=True)}.get(name, name)
    recipe = build_recipe(cfg)
    lin, w, b = make_pair(64, 96)
    q = QuantLinear.from_linear(lin, recipe, layer_id=2)
    transposed = []
    monkeypatch.setattr(linear_module, "transpose", lambda qt: transposed.append(qt) or transpose(qt))
    x, dy = torch.randn(32, 64), torch.randn(32, 96)
    _, dx, _, _ = run(q, x, dy)
    assert len(transposed) == int(reuses)
    # either way Dgrad's W is quantize(Wᵀ, w_dgrad): dx equals that product (in float64)
    _, rdx, _ = reference(recipe, 2, 1, x, fake_quantize(w, recipe.w_fprop) if recipe.double_quant else w, b, dy)
    torch.testing.assert_close(dx.double(), rdx, rtol=2e-6, atol=2e-6 * rdx.abs().max().item())


def test_q_ema_dgrad_quantizes_the_weight_itself_while_ema_rounds(monkeypatch):
    from fp4train.methods.tetrajet import QEMALinear

    recipe = build_recipe(RecipeConfig(name="tetrajet_qema", weight_2d=True, sr=False, double_quant=False,
                                       methods={"tetrajet": {"q_ema_decay": 0.9, "q_ema_warmup": 0}}))
    q = QEMALinear(64, 64, recipe=recipe)
    transposed = []
    monkeypatch.setattr(linear_module, "transpose", lambda qt: transposed.append(qt) or transpose(qt))
    x, dy = torch.randn(32, 64), torch.randn(32, 64)
    run(q, x, dy)  # no EMA yet: W rounds plainly, and its 32×32 blocks transpose exactly
    assert len(transposed) == 1
    q.update_ema()
    _, dx, _, _ = run(q, x, dy)  # Q-EMA rounds W: Dgrad quantizes Wᵀ itself
    assert len(transposed) == 1
    w = q.weight.detach()
    rdx = fake_quantize(dy, recipe.dy_dgrad).double() @ fake_quantize(w.T, recipe.w_dgrad).double().T
    torch.testing.assert_close(dx.double(), rdx, rtol=2e-6, atol=2e-6 * rdx.abs().max().item())


def test_a_subclass_with_its_own_weight_quantizer_is_not_assumed_to_round_plainly():
    class Rounded(QuantLinear):
        def quantize_weight(self, weight, spec):
            return super().quantize_weight(weight, spec)

    assert QuantLinear(64, 64).rounds_weight_plainly()
    assert not Rounded(64, 64).rounds_weight_plainly()


def test_quantized_layer_under_autocast_keeps_fp32_weight_grads():
    q = QuantLinear.from_linear(nn.Linear(64, 48), build_recipe("nvfp4"))
    x = torch.randn(2, 16, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = q(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert q.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert torch.isfinite(q.weight.grad).all()


def test_sr_step_is_saved_in_the_state_dict():
    q = QuantLinear.from_linear(nn.Linear(64, 48), build_recipe("nvfp4"))
    for _ in range(3):
        q(torch.randn(16, 64)).sum().backward()
    r = QuantLinear.from_linear(nn.Linear(64, 48), build_recipe("nvfp4"))
    r.load_state_dict(q.state_dict())
    assert int(r.sr_step) == int(q.sr_step) == 3


def test_nan_in_activations_reaches_the_output():
    q = QuantLinear.from_linear(nn.Linear(64, 48), build_recipe("nvfp4"))
    x = torch.randn(16, 64)
    x[3, 3] = float("nan")
    assert torch.isnan(q(x)).all()  # NVFP4's tensor scale turns NaN: training notices


def test_a_layer_built_on_meta_has_state_and_restarts_its_counter_after_to_empty():
    q = QuantLinear(64, 48, recipe="nvfp4", device="meta")
    assert q.state_dict()["_extra_state"] == {"sr_step": 0}
    q.to_empty(device="cpu")
    q.sr_step.fill_(7)  # to_empty leaves whatever the memory held
    q.reset_parameters()  # what a meta-initialised model runs after to_empty
    assert int(q.sr_step) == 0


def test_ranks_of_a_data_parallel_run_draw_independent_sr_bits(monkeypatch):
    q = QuantLinear.from_linear(nn.Linear(64, 48), build_recipe("nvfp4"))
    keys = {}
    for rank in (0, 1, 2):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        keys[rank] = q._plan(True).keys[OPERANDS.index("dy_wgrad")]
    monkeypatch.undo()
    assert keys[0] == q._plan(True).keys[OPERANDS.index("dy_wgrad")]  # rank 0 draws what a single process draws
    assert len(set(keys.values())) == 3


@pytest.mark.parametrize("kind", ["nn.Linear", "QuantLinear wgrad in bf16"])
def test_an_input_changed_in_place_after_forward_fails_backward_by_name(kind):
    """With Wgrad in high precision, Wgrad's x is kept as is: a view of the input. Changing the
    input in place before backward must raise, as nn.Linear does, not give dW from the changed
    values (issue 21, item 6)."""
    layer = make_pair(64, 48)[0]
    if kind != "nn.Linear":
        layer = QuantLinear.from_linear(layer, build_recipe("nvfp4"))
        layer.high_precision = frozenset({"wgrad"})
    for h in (torch.randn(32, 64), torch.randn(32, 64, requires_grad=True) * 1):  # input without / with grad
        y = layer(h)
        h.mul_(0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


@pytest.mark.parametrize("name", ["nvfp4", "tetrajet"])
def test_backward_reads_the_copies_saved_tensors_hooks_packed(name):
    """Every tensor backward reads passes through ``saved_tensors_hooks`` (offloading, activation
    checkpointing): hooks that pack copies see the quantized codes, and backward computes from
    the copies — overwriting the originals after forward changes nothing."""
    recipe = build_recipe(RecipeConfig(name=name, seed=1))
    x, dy = torch.randn(32, 64), torch.randn(32, 64)
    expected = run(QuantLinear.from_linear(make_pair(64, 64)[0], recipe, layer_id=3), x, dy)
    q = QuantLinear.from_linear(make_pair(64, 64)[0], recipe, layer_id=3)
    originals = []

    def pack(t):
        originals.append(t)
        return t.clone()

    xg = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = q(xg)
    codes = [t for t in originals if t.dtype == torch.uint8]
    assert codes and any(t.numel() == 32 * 64 // 2 for t in codes)  # Wgrad's packed FP4 copy of x
    with torch.no_grad():
        for t in codes:
            t.fill_(0x77)  # garbage in every original code and scale byte
    y.backward(dy)
    for a, b in zip(expected, (y.detach(), xg.grad, q.weight.grad, q.bias.grad)):
        assert torch.equal(a, b)


def test_a_layer_called_twice_before_backward_rounds_each_call_with_its_own_bits():
    """Two calls of one layer, one backward (shared weights; issue 21, item 9): each call's
    gradient equals that of the same call run forward-and-backward on its own, and the weight
    gradient is the sum of the float64 references at steps 1 and 2 (not twice step 2's bits)."""
    recipe = build_recipe(RecipeConfig(name="nvfp4", seed=2))
    g = torch.Generator().manual_seed(3)
    x1, x2, dy1, dy2 = (torch.randn(32, n, generator=g) for n in (64, 64, 48, 48))
    lin, w, b = make_pair(64, 48)
    together = QuantLinear.from_linear(lin, recipe, layer_id=4)
    a1, a2 = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    ((together(a1) * dy1).sum() + (together(a2) * dy2).sum()).backward()
    alone = QuantLinear.from_linear(make_pair(64, 48)[0], recipe, layer_id=4)
    _, dx1, dw1, _ = run(alone, x1, dy1)
    dw1 = dw1.clone()
    alone.weight.grad = alone.bias.grad = None
    _, dx2, dw2, _ = run(alone, x2, dy2)
    assert torch.equal(a1.grad, dx1) and torch.equal(a2.grad, dx2)
    assert torch.equal(together.weight.grad, dw1 + dw2)
    rdw = reference(recipe, 4, 1, x1, w, b, dy1)[2] + reference(recipe, 4, 2, x2, w, b, dy2)[2]
    torch.testing.assert_close(together.weight.grad.double(), rdw, rtol=2e-6, atol=2e-6 * rdw.abs().max().item())


def _spy(monkeypatch):
    """Shapes of the tensors ``linear.py`` quantizes or transposes, and the number of GEMMs."""
    seen = {"quantized": [], "gemms": 0}

    def quantize_spy(t, spec, **kw):
        seen["quantized"].append(tuple(t.shape))
        return quantize(t, spec, **kw)

    def pair_spy(t, row_spec, col_spec, **kw):
        seen["quantized"] += [tuple(t.shape), tuple(t.T.shape)]
        return linear_module.__dict__["_real_pair"](t, row_spec, col_spec, **kw)

    def matmul_spy(*args, **kw):
        seen["gemms"] += 1
        return linear_module.__dict__["_real_matmul"](*args, **kw)

    monkeypatch.setitem(linear_module.__dict__, "_real_pair", linear_module.quantize_pair)
    monkeypatch.setitem(linear_module.__dict__, "_real_matmul", linear_module.quantized_matmul)
    monkeypatch.setattr(linear_module, "quantize", quantize_spy)
    monkeypatch.setattr(linear_module, "quantize_pair", pair_spy)
    monkeypatch.setattr(linear_module, "quantized_matmul", matmul_spy)
    monkeypatch.setattr(linear_module, "transpose", lambda qt: seen["quantized"].append(tuple(qt.shape[::-1])) or transpose(qt))
    return seen


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4", "tetrajet"])
def test_backward_computes_only_the_gradients_autograd_asks_for(name, monkeypatch):
    """An input that needs no gradient (a first layer) gets no Dgrad: dy and Wᵀ are not quantized
    and the GEMM does not run; a frozen weight gets no Wgrad, and forward keeps no Wgrad copy of
    x. Shapes (tokens 32, in 64, out 96): x (32, 64), W (96, 64), xᵀ (64, 32), Wᵀ (64, 96),
    dy (32, 96), dyᵀ (96, 32). Issue 21, item 10."""
    recipe = build_recipe(RecipeConfig(name=name, seed=1))
    seen = _spy(monkeypatch)
    q = QuantLinear.from_linear(make_pair(64, 96)[0], recipe)
    y = q(torch.randn(32, 64))
    y.backward(torch.randn(32, 96))
    assert seen["gemms"] == 2 and q.weight.grad is not None
    assert (32, 96) not in seen["quantized"] and (64, 96) not in seen["quantized"]
    assert {(32, 64), (96, 64), (64, 32), (96, 32)} <= set(seen["quantized"])

    seen["quantized"].clear(), seen.__setitem__("gemms", 0)
    q.weight.requires_grad_(False)
    x = torch.randn(32, 64, requires_grad=True)
    q(x).backward(torch.randn(32, 96))
    assert seen["gemms"] == 2 and x.grad is not None and q.bias.grad is not None
    assert (64, 32) not in seen["quantized"] and (96, 32) not in seen["quantized"]
    assert {(32, 64), (96, 64), (32, 96), (64, 96)} <= set(seen["quantized"])


@pytest.mark.parametrize("change", ["high_precision", "sr_step"])
def test_backward_reads_no_layer_state_changed_after_forward(change):
    """A precision schedule switching GEMMs, or the step counter moving, between a call's forward
    and its backward does not change that call's gradients (issue 21, item 10)."""
    recipe = build_recipe(RecipeConfig(name="nvfp4", sr_scope="backward", seed=5))
    x, dy = torch.randn(32, 64), torch.randn(32, 48)
    expected = run(QuantLinear.from_linear(make_pair(64, 48)[0], recipe), x, dy)
    q = QuantLinear.from_linear(make_pair(64, 48)[0], recipe)
    xg = x.clone().requires_grad_(True)
    y = q(xg)
    if change == "high_precision":
        q.high_precision = frozenset({"dgrad", "wgrad"})
    else:
        q.sr_step.fill_(100)
    y.backward(dy)
    for a, b in zip(expected[1:], (xg.grad, q.weight.grad, q.bias.grad)):
        assert torch.equal(a, b)
