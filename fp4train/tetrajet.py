"""TetraJet's oscillation remedies and metrics ("Oscillation-Reduced MXFP4 Training for Vision
Transformers", Chen et al., arXiv 2502.20853): Q-EMA (§5, Alg. 1), Q-Ramping (§6, Alg. 2) and the
oscillation measures of §4 / App. A. The recipe side (MXFP4 everywhere, truncation-free scales,
SR on Q3–Q6, double quantization) lives in ``fp4train.recipes`` (``tetrajet*``).

* **Q-EMA**: ``W_ema ← β·W_ema + (1−β)·W`` after every optimizer step. The forward weight
  quantizer takes the block scale ``S`` and the two grid points ``q1 ≤ W/S ≤ q2`` from the current
  ``W`` and keeps the one nearer to ``W_ema/S`` (ties: round to nearest). Active once the EMA
  has ``warmup`` (10) updates.
* **Oscillation ratio** of a weight over a window: ``R_w = Σ|Q(w_t) − Q(w_{t−1})| / Σ|w_t − w_{t−1}|``;
  ``R_w > 16`` counts as oscillating. A *flip* is a change of ``Q(w)`` opposite to its previous
  change. **Quantization confidence**: distance of ``W/S`` to the nearest rounding threshold over
  the largest such distance in its rounding interval (1 on a grid point, 0 on a threshold).
* **Q-Ramping**: every ``every_n_steps``, ``calib_steps`` plain optimizer steps measure ``R_w`` and
  are undone; each quantized weight then gets the period ``p = min(k2·floor(R_w/k1) + 1, n_max)``:
  its gradient is accumulated over ``p`` steps and it is updated once, with the averaged gradient
  and ``p`` times the step (learning rate × p). Decoupled weight decay still applies every step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn as nn

from fp4train.linear import QuantLinear
from fp4train.quant import QuantizedTensor, QuantSpec, dequantize, quantize
from fp4train.quant.blocks import expand_blocks
from fp4train.quant.formats import decode, encode, grid_neighbours, pack_fp4, round_to_grid
from fp4train.recipes import QRampingConfig

__all__ = [
    "QEMALinear",
    "ema_round",
    "quantization_confidence",
    "OscillationTracker",
    "QRamping",
    "attach_tetrajet",
]


def _element_domain(weight: torch.Tensor, spec: QuantSpec) -> tuple[QuantizedTensor, torch.Tensor]:
    """The RN quantization of ``weight`` and ``weight / S`` (exact: MX scales are powers of two)."""
    if spec.format.scale != "e8m0":
        raise ValueError(f"TetraJet's weight quantizers are defined for MX formats (E8M0 scales), got {spec.fmt!r}")
    if spec.rht is not None or spec.pad:
        raise ValueError("TetraJet's weight quantizers take no RHT or padding")
    qt = quantize(weight, spec)
    scale = expand_blocks(qt.scale_values(), spec.block_shape, qt.padded)
    return qt, weight.reshape(qt.padded).float() / scale


def ema_round(weight: torch.Tensor, weight_ema: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
    """Q-EMA (TetraJet Alg. 1): of the two grid points around ``W/S`` pick the one nearer
    ``W_ema/S``; ``S`` and the candidates come from the current ``W``."""
    qt, t = _element_domain(weight, spec)
    element = spec.format.element
    toward, away = grid_neighbours(t, element)
    e = weight_ema.reshape(qt.padded).float() / (weight.reshape(qt.padded).float() / t)
    e = torch.where(torch.isfinite(e), e, t)  # zero weights: S·0 — keep RN
    d_toward, d_away = (e - toward).abs(), (e - away).abs()
    nearest = round_to_grid(t, element, "rn")
    q = torch.where(d_toward < d_away, toward, torch.where(d_away < d_toward, away, nearest))
    codes = encode(q, element)
    return replace(qt, data=pack_fp4(codes) if spec.format.is_fp4 else codes)


def quantization_confidence(weight: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per-element confidence in [0, 1] (TetraJet App. A) of ``weight``'s RN quantization."""
    qt, t = _element_domain(weight, spec)
    element = spec.format.element
    grid = decode(torch.arange(2 ** (element.nbits - 1), dtype=torch.uint8), element)
    grid = grid[torch.isfinite(grid)].sort().values.to(t.device)  # non-negative grid, 0 first
    a = t.abs().clamp(max=element.max)
    idx = torch.searchsorted(grid, round_to_grid(a, element, "rn"))
    lower = torch.where(idx > 0, (grid[(idx - 1).clamp(min=0)] + grid[idx]) / 2, -grid[1] / 2)
    top = idx >= len(grid) - 1
    upper = torch.where(top, torch.full_like(a, torch.inf), (grid[idx] + grid[(idx + 1).clamp(max=len(grid) - 1)]) / 2)
    half = torch.where(top, grid[idx] - lower, (upper - lower) / 2)
    return (torch.minimum(a - lower, upper - a) / half).clamp(0, 1)


class QEMALinear(QuantLinear):
    """``QuantLinear`` whose Fprop weight quantizer is Q-EMA (``recipe.q_ema_decay``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.recipe.q_ema_decay is None:
            raise ValueError(f"recipe {self.recipe.name!r} has no q_ema_decay: use QuantLinear")
        self.register_buffer("weight_ema", None)
        self.ema_updates = 0

    @torch.no_grad()
    def update_ema(self) -> None:
        """``W_ema ← β·W_ema + (1−β)·W`` (initialised to ``W`` on the first call)."""
        w = self.weight.detach().float()
        if self.weight_ema is None:
            self.weight_ema = w.clone()
        else:
            self.weight_ema.mul_(self.recipe.q_ema_decay).add_(w, alpha=1 - self.recipe.q_ema_decay)
        self.ema_updates += 1

    def quantize_weight(self, weight: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
        if spec.is_identity or not self._ema_rounds():
            return super().quantize_weight(weight, spec)
        return ema_round(weight.detach(), self.weight_ema, spec)

    def rounds_weight_plainly(self) -> bool:
        return not self._ema_rounds()

    def _ema_rounds(self) -> bool:
        return self.weight_ema is not None and self.ema_updates >= self.recipe.q_ema_warmup

    def graph_key(self) -> tuple:
        return (*super().graph_key(), self._ema_rounds())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight_ema"
        if key in state_dict and self.weight_ema is None:
            self.weight_ema = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "ema_updates": self.ema_updates}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.ema_updates = int(state.get("ema_updates", 0))


def _weight_quantized_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear) and not m.operand_spec("w_fprop").is_identity}


@torch.no_grad()
def _forward_weight_values(layer: QuantLinear) -> torch.Tensor:
    """``Q(W)``: the weight values the layer's Fprop GEMM multiplies right now."""
    return dequantize(layer.quantize_weight(layer.weight.detach(), layer.operand_spec("w_fprop")), dtype=torch.float32)


class OscillationTracker:
    """Per-layer oscillation statistics of the forward-quantized weights over a window of steps.

    Call ``step()`` after every optimizer step; ``metrics()`` returns, per layer:
    ``flip_fraction`` (weights whose ``Q(w)`` reversed direction at least once in the window),
    ``changed_fraction`` (``Q(w)`` changed at all), ``oscillating_fraction`` (``R_w > threshold``),
    ``oscillation_ratio`` (mean ``R_w`` over weights that moved) and ``confidence`` (mean).
    """

    def __init__(self, model: nn.Module, threshold: float = 16.0) -> None:
        self.layers = _weight_quantized_layers(model)
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        """Start a new window from the current weights."""
        self.steps = 0
        self._prev = {n: (m.weight.detach().float().clone(), _forward_weight_values(m)) for n, m in self.layers.items()}
        zeros = {n: torch.zeros_like(w) for n, (w, _) in self._prev.items()}
        self._sum_dq = {n: z.clone() for n, z in zeros.items()}
        self._sum_dw = {n: z.clone() for n, z in zeros.items()}
        self._last_dir = {n: z.clone() for n, z in zeros.items()}
        self._flipped = {n: z.bool() for n, z in zeros.items()}

    @torch.no_grad()
    def step(self) -> None:
        """Accumulate one optimizer step's weight and quantized-weight changes."""
        for n, m in self.layers.items():
            w, q = m.weight.detach().float(), _forward_weight_values(m)
            w0, q0 = self._prev[n]
            dq = q - q0
            self._sum_dq[n] += dq.abs()
            self._sum_dw[n] += (w - w0).abs()
            direction = torch.sign(dq)
            self._flipped[n] |= (direction != 0) & (direction == -self._last_dir[n])
            self._last_dir[n] = torch.where(direction != 0, direction, self._last_dir[n])
            self._prev[n] = (w.clone(), q)
        self.steps += 1

    def oscillation_ratio(self, name: str) -> torch.Tensor:
        """Per-element ``R_w`` of layer ``name`` over the window (0 where nothing changed)."""
        dq, dw = self._sum_dq[name], self._sum_dw[name]
        return torch.where(dq > 0, dq / dw.clamp(min=torch.finfo(torch.float32).tiny), torch.zeros_like(dq))

    def metrics(self) -> dict[str, dict[str, float]]:
        out = {}
        for n, m in self.layers.items():
            r = self.oscillation_ratio(n)
            moved = self._sum_dw[n] > 0
            out[n] = {
                "flip_fraction": self._flipped[n].float().mean().item(),
                "changed_fraction": (self._sum_dq[n] > 0).float().mean().item(),
                "oscillating_fraction": (r > self.threshold).float().mean().item(),
                "oscillation_ratio": r[moved].mean().item() if moved.any() else 0.0,
                "confidence": quantization_confidence(m.weight.detach(), m.operand_spec("w_fprop")).mean().item(),
            }
        return out


class QRamping:
    """Q-Ramping (TetraJet §6, Alg. 2) on top of any torch optimizer whose state tensors have
    their parameter's shape (AdamW, Adam, SGD with momentum), through step hooks: the wrapped
    optimizer stays the object the training loop sees.

    Per quantized weight element with period ``p``: its gradient is accumulated; on the step where
    ``p`` gradients have been seen the optimizer runs on their average and the element moves by
    ``p`` times that step; on other steps the element and its optimizer state are left as they
    were, except for decoupled weight decay. With every period 1 the optimizer is unchanged, bit for
    bit. Parameters that are not forward-quantized weights use the plain optimizer.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: QRampingConfig = QRampingConfig()):
        self.model, self.optimizer, self.config = model, optimizer, config
        self.params = {id(m.weight): m.weight for m in _weight_quantized_layers(model).values()}
        self.period = {k: torch.ones_like(p, dtype=torch.int32) for k, p in self.params.items()}
        self._acc = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self._count = {k: torch.zeros_like(p, dtype=torch.int32) for k, p in self.params.items()}
        self._saved: dict[int, tuple] = {}
        self._handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    def _group_of(self, p: torch.Tensor) -> dict:
        return next(g for g in self.optimizer.param_groups if any(q is p for q in g["params"]))

    def _pre(self, optimizer, args, kwargs):
        """Accumulate this step's gradients. A ``closure`` (Lightning passes one: it runs forward
        and backward inside ``step``) is run here first, so the gradients exist; ``step`` then
        gets its result instead of running it again."""
        # the hook sees step's own arguments: (optimizer, [closure]), kwargs
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            args, kwargs = args[:1], {**{k: v for k, v in kwargs.items() if k != "closure"}, "closure": lambda: loss}
        with torch.no_grad():
            self._accumulate(optimizer)
        return args, kwargs

    def _accumulate(self, optimizer) -> None:
        self._saved = {}
        for k, p in self.params.items():
            if p.grad is None:
                continue
            self._acc[k] += p.grad
            self._count[k] += 1
            ready = self._count[k] >= self.period[k]
            if bool(ready.all()) and bool((self.period[k] == 1).all()):
                self._acc[k].zero_()
                self._count[k].zero_()
                continue  # plain step for this tensor
            p.grad.copy_(torch.where(ready, self._acc[k] / self._count[k].clamp(min=1), p.grad))
            state = {n: t.clone() for n, t in optimizer.state.get(p, {}).items() if torch.is_tensor(t) and t.shape == p.shape}
            self._saved[k] = (p.detach().clone(), state, ready)  # empty state: the step creates it

    @torch.no_grad()
    def _post(self, optimizer, args, kwargs) -> None:
        for k, (old, old_state, ready) in self._saved.items():
            p = self.params[k]
            group = self._group_of(p)
            decoupled = isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay", False)
            decay = -group["lr"] * group.get("weight_decay", 0.0) * old if decoupled else torch.zeros_like(old)
            period = self.period[k]
            ramped = old + decay + period.to(p.dtype) * (p - old - decay)
            p.copy_(torch.where(ready & (period == 1), p, torch.where(ready, ramped, old + decay)))
            for n, t in optimizer.state[p].items():
                if torch.is_tensor(t) and t.shape == p.shape:  # elements not due keep their old (or zero) state
                    t.copy_(torch.where(ready, t, old_state.get(n, torch.zeros_like(t))))
            self._acc[k] = torch.where(ready, torch.zeros_like(self._acc[k]), self._acc[k])
            self._count[k] = torch.where(ready, torch.zeros_like(self._count[k]), self._count[k])
        self._saved = {}

    def _names(self) -> dict[int, str]:
        return {id(p): n for n, p in self.model.named_parameters() if id(p) in self.params}

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Periods, accumulated gradients and counts, keyed by parameter name (for checkpoints)."""
        names = self._names()
        return {key: {names[k]: t.clone() for k, t in getattr(self, attr).items()}
                for key, attr in (("period", "period"), ("acc", "_acc"), ("count", "_count"))}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        names = self._names()
        for key, attr in (("period", "period"), ("acc", "_acc"), ("count", "_count")):
            target = getattr(self, attr)
            for k, name in names.items():
                if name not in state[key]:
                    raise KeyError(f"Q-Ramping state has no {key!r} for parameter {name!r}")
                target[k] = state[key][name].to(target[k].device, target[k].dtype).clone()

    def calibrate(self, run_step: Callable[[], None]) -> dict[str, float]:
        """Run ``calib_steps`` plain optimizer steps (``run_step`` does forward, backward and
        ``optimizer.step()``), measure ``R_w``, restore model and optimizer, set the periods.
        Returns the mean period per layer."""
        model_state = copy.deepcopy(self.model.state_dict())
        optim_state = copy.deepcopy(self.optimizer.state_dict())
        for k in self.period:
            self.period[k].fill_(1)
            self._acc[k].zero_()
            self._count[k].zero_()
        tracker = OscillationTracker(self.model)
        for _ in range(self.config.calib_steps):
            run_step()
            tracker.step()
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optim_state)
        summary = {}
        for name, layer in tracker.layers.items():
            r = tracker.oscillation_ratio(name)
            p = (self.config.k2 * torch.floor(r / self.config.k1) + 1).clamp(max=self.config.n_max)
            self.period[id(layer.weight)] = p.to(torch.int32)
            summary[name] = p.mean().item()
        return summary

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def attach_tetrajet(model: nn.Module, optimizer: torch.optim.Optimizer) -> QRamping | None:
    """Hook TetraJet's per-step machinery to ``optimizer``: Q-EMA updates after every step for
    ``QEMALinear`` layers, and a ``QRamping`` if the layers' recipe asks for it (returned and set
    as ``optimizer.qramping``, so the training loop can call ``calibrate`` on schedule)."""
    ema_layers = [m for m in model.modules() if isinstance(m, QEMALinear)]
    if ema_layers:
        def update(*_):
            for m in ema_layers:
                m.update_ema()

        optimizer.register_step_post_hook(update)
    recipes = {m.recipe.q_ramping for m in model.modules() if isinstance(m, QuantLinear)}
    config = next((r for r in recipes if r is not None), None)
    if config is None:
        return None
    optimizer.qramping = QRamping(model, optimizer, config)  # found there by QRampingCalibration
    return optimizer.qramping
