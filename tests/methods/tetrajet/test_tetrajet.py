"""TetraJet components, each tested on its defining property."""

import copy

import torch
import torch.nn as nn

from fp4train import QuantSpec, fake_quantize
from fp4train.convert import convert
from fp4train.linear import QuantLinear
from fp4train.quant_stats import quant_stats
from fp4train.methods.tetrajet import (
    OscillationTracker,
    QEMALinear,
    QRamping,
    QRampingConfig,
    attach_tetrajet,
    ema_round,
    quantization_confidence,
)
from fp4train.recipes import OPERANDS, RecipeConfig, build_recipe
from fp4train.quant import dequantize

MX = QuantSpec("mxfp4", scale_rule="ceil")


def test_tetrajet_recipe_is_the_papers_table():
    r = build_recipe("tetrajet")
    assert all(r.spec(o).fmt == "mxfp4" and r.spec(o).mx_rule == "ceil" for o in OPERANDS)
    assert [r.spec(o).rounding for o in OPERANDS] == ["rn", "rn", "sr", "sr", "sr", "sr"]
    assert r.double_quant and (r.bf16_first_blocks, r.bf16_last_blocks) == (0, 0)
    ablation = build_recipe(RecipeConfig(name="tetrajet", scale_rule="floor", double_quant=False, sr=False))
    assert ablation.x_fprop.mx_rule == "floor" and not ablation.double_quant
    assert all(ablation.spec(o).rounding == "rn" for o in OPERANDS)


def test_truncation_free_scale_never_clips_the_block_maximum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 256, generator=g) * torch.exp(2 * torch.randn(256, 256, generator=g))
    assert quant_stats(x, build_recipe("tetrajet").x_fprop)["clipped"] == 0
    assert quant_stats(x, build_recipe("mxfp4").x_fprop)["clipped"] > 0


def test_ema_round_picks_the_neighbour_nearest_the_ema():
    w = torch.zeros(1, 32)
    w[0, 0] = 6.0  # fixes the block scale at 1 (ceil rule)
    w[0, 1], w[0, 2] = 1.2, -1.2  # neighbours ±1 and ±1.5; RN gives ±1
    ema = w.clone()
    ema[0, 1], ema[0, 2] = 1.45, -1.1
    q = dequantize(ema_round(w, ema, MX))
    assert q[0, 1] == 1.5 and q[0, 2] == -1.0
    assert torch.equal(q[0, 3:], fake_quantize(w, MX)[0, 3:])


def test_ema_round_with_ema_equal_to_weights_is_round_to_nearest():
    w = torch.randn(64, 128) * torch.exp(torch.randn(64, 128))
    w[0, :32] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 4)  # ties
    assert torch.equal(dequantize(ema_round(w, w, MX)), fake_quantize(w, MX))


def train_steps(layer, steps=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    attach_tetrajet(layer, opt)
    outs = []
    for _ in range(steps):
        x = torch.randn(32, 64, generator=g)
        y = layer(x)
        outs.append(y.detach())
        y.square().mean().backward()
        opt.step()
        opt.zero_grad()
    return outs


def test_q_ema_with_decay_zero_equals_plain_quantization():
    torch.manual_seed(0)
    base = nn.Linear(64, 64)
    plain = QuantLinear.from_linear(copy.deepcopy(base), build_recipe("tetrajet"))
    ema = QEMALinear.from_linear(copy.deepcopy(base), build_recipe(RecipeConfig(name="tetrajet_qema", methods={"tetrajet": {"q_ema_decay": 0.0, "q_ema_warmup": 0}})))
    for a, b in zip(train_steps(plain), train_steps(ema)):
        assert torch.equal(a, b)
    assert ema.ema_updates == 6 and torch.equal(plain.weight, ema.weight)


def test_q_ema_state_survives_a_state_dict_round_trip():
    recipe = build_recipe("tetrajet_qema")
    layer = QEMALinear.from_linear(nn.Linear(64, 64), recipe)
    train_steps(layer, steps=3)
    other = QEMALinear.from_linear(nn.Linear(64, 64), recipe)
    other.load_state_dict(layer.state_dict())
    assert other.ema_updates == 3 and torch.equal(other.weight_ema, layer.weight_ema)


def test_convert_builds_q_ema_layers_for_q_ema_recipes():
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(64, 64)])
    convert(model, "tetrajet_qema")
    assert isinstance(model.blocks[0], QEMALinear)


def test_q_ramping_on_weights_that_never_oscillate_is_the_wrapped_optimizer():
    torch.manual_seed(1)
    base = nn.Linear(64, 64)
    recipe = build_recipe("tetrajet")
    a = QuantLinear.from_linear(copy.deepcopy(base), recipe)
    b = QuantLinear.from_linear(copy.deepcopy(base), recipe)
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.05)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.05)
    QRamping(b, opt_b)  # every period 1
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(32, 64, generator=g)
        for layer, opt in ((a, opt_a), (b, opt_b)):
            layer(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert torch.equal(opt_a.state[a.weight]["exp_avg"], opt_b.state[b.weight]["exp_avg"])


def test_q_ramping_period_accumulates_then_takes_one_larger_step():
    """Plain SGD: an element with period 3 stays put for two steps (bar weight decay), then moves
    by lr·3·mean(grad) — a larger batch and learning rate for that element only."""
    layer = QuantLinear.from_linear(nn.Linear(32, 16, bias=False), build_recipe("tetrajet"))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    ramp = QRamping(layer, opt)
    ramp.period[id(layer.weight)][0, 0] = 3
    w0 = layer.weight.detach().clone()
    grads = []
    for i in range(3):
        g = torch.full_like(layer.weight, float(i + 1))
        layer.weight.grad = g.clone()
        grads.append(g)
        opt.step()
        if i < 2:
            assert layer.weight[0, 0] == w0[0, 0]
    expected = w0[0, 0] - 0.1 * 3 * (1 + 2 + 3) / 3
    assert torch.isclose(layer.weight[0, 0], expected)
    assert torch.allclose(layer.weight[0, 1], w0[0, 1] - 0.1 * (1 + 2 + 3))  # period 1: plain SGD


def test_q_ramping_calibration_restores_the_model_and_sets_periods():
    torch.manual_seed(2)
    layer = QuantLinear.from_linear(nn.Linear(64, 64), build_recipe("tetrajet_qramping"))
    opt = torch.optim.AdamW(layer.parameters(), lr=5e-2)
    ramp = attach_tetrajet(layer, opt)
    assert isinstance(ramp, QRamping)
    before = copy.deepcopy(layer.state_dict())
    x = torch.randn(32, 64)

    def run_step():
        layer(x + 0.1 * torch.randn_like(x)).square().mean().backward()
        opt.step()
        opt.zero_grad()

    summary = ramp.calibrate(run_step)
    for k, v in before.items():
        if torch.is_tensor(v):
            assert torch.equal(layer.state_dict()[k], v), k
    assert opt.state == {} or all(len(s) == 0 for s in opt.state.values())
    period = ramp.period[id(layer.weight)]
    assert period.min() >= 1 and period.max() <= QRampingConfig().n_max
    assert set(summary) == {""}


def test_oscillation_tracker_counts_a_constructed_flip_sequence():
    layer = QuantLinear.from_linear(nn.Linear(32, 16, bias=False), build_recipe("tetrajet"))
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, 0] = 6.0  # block scale 1 for every row (ceil rule)
        layer.weight[0, 1] = 1.2  # RN → 1.0; crosses the 1.25 threshold back and forth
        layer.weight[1, 1] = 2.2  # moves but never crosses a threshold
    tracker = OscillationTracker(layer)
    for w01, w11 in ((1.3, 2.3), (1.2, 2.2), (1.3, 2.3), (1.2, 2.2)):
        with torch.no_grad():
            layer.weight[0, 1], layer.weight[1, 1] = w01, w11
        tracker.step()
    r = tracker.oscillation_ratio("")
    assert torch.isclose(r[0, 1], torch.tensor(0.5 * 4 / 0.4))  # ΣΔQ = 4·0.5, ΣΔw = 4·0.1
    assert r[1, 1] == 0
    m = tracker.metrics()[""]
    assert m["flip_fraction"] == 1 / (16 * 32)  # one weight reversed direction
    assert m["changed_fraction"] == 1 / (16 * 32)
    assert m["oscillating_fraction"] == 0  # R = 5 ≤ 16


def test_quantization_confidence_is_one_on_grid_points_and_zero_on_thresholds():
    w = torch.zeros(1, 32)
    w[0, 0] = 6.0
    w[0, 1:5] = torch.tensor([1.0, 1.25, 1.125, -3.0])
    c = quantization_confidence(w, MX)[0]
    assert c[1] == 1 and c[2] == 0 and c[3] == 0.5 and c[4] == 1 and c[0] == 1


def test_q_ramping_leaves_fresh_optimizer_state_of_waiting_elements_at_zero():
    layer = QuantLinear.from_linear(nn.Linear(32, 16, bias=False), build_recipe("tetrajet"))
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.0)
    ramp = QRamping(layer, opt)
    ramp.period[id(layer.weight)][0, 0] = 3
    w0 = layer.weight.detach().clone()
    layer.weight.grad = torch.ones_like(layer.weight)
    opt.step()  # the first step creates AdamW's state
    assert layer.weight[0, 0] == w0[0, 0]
    assert opt.state[layer.weight]["exp_avg"][0, 0] == 0 and opt.state[layer.weight]["exp_avg_sq"][0, 0] == 0
    assert opt.state[layer.weight]["exp_avg"][0, 1] != 0


def test_q_ramping_state_round_trips_by_parameter_name():
    torch.manual_seed(0)
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(64, 64), nn.Linear(64, 64)])
    convert(model, "tetrajet_qramping")
    ramp = QRamping(model, torch.optim.SGD(model.parameters(), lr=0.1))
    w = model.blocks[1].weight
    ramp.period[id(w)][3, 5] = 6
    ramp._acc[id(w)][3, 5] = 2.5
    ramp._count[id(w)][3, 5] = 2
    clone = copy.deepcopy(model)
    other = QRamping(clone, torch.optim.SGD(clone.parameters(), lr=0.1))
    other.load_state_dict(ramp.state_dict())
    w2 = clone.blocks[1].weight
    assert other.period[id(w2)][3, 5] == 6 and other._acc[id(w2)][3, 5] == 2.5 and other._count[id(w2)][3, 5] == 2
    assert set(ramp.state_dict()["period"]) == {"blocks.0.weight", "blocks.1.weight"}


def test_q_ramping_sees_the_gradients_of_a_closure_step_like_lightnings():
    """Lightning runs forward and backward inside ``optimizer.step(closure)``; the ramped element
    must still accumulate this step's gradient and move only on its third step."""
    layer = QuantLinear.from_linear(nn.Linear(32, 16, bias=False), build_recipe("tetrajet"))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    ramp = QRamping(layer, opt)
    ramp.period[id(layer.weight)][0, 0] = 3
    w0 = layer.weight.detach().clone()
    for i in range(3):
        def closure(i=i):
            opt.zero_grad()
            loss = (layer.weight * float(i + 1)).sum()  # gradient i + 1 everywhere
            loss.backward()
            return loss

        loss = opt.step(closure)
        assert loss is not None
        if i < 2:
            assert layer.weight[0, 0] == w0[0, 0]
    assert torch.isclose(layer.weight[0, 0], w0[0, 0] - 0.1 * 3 * (1 + 2 + 3) / 3)
    assert torch.allclose(layer.weight[0, 1], w0[0, 1] - 0.1 * (1 + 2 + 3))
