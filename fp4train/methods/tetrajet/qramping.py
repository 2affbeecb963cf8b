"""Q-Ramping (TetraJet, arXiv 2502.20853 §6, Alg. 2): a per-element larger batch and learning
rate for the weights that oscillate.

Every ``every_n_steps``, ``calib_steps`` plain optimizer steps measure each quantized weight's
oscillation ratio ``R_w`` (``fp4train.methods.tetrajet.oscillation``) and are undone; each element
then gets the period ``p = min(k2·floor(R_w/k1) + 1, n_max)``: its gradient is accumulated over
``p`` steps and it is updated once, with the averaged gradient and ``p`` times the step (learning
rate × p). Decoupled weight decay still applies every step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn

from fp4train.methods.tetrajet.config import QRampingConfig
from fp4train.methods.tetrajet.oscillation import OscillationTracker, weight_quantized_layers

__all__ = ["QRamping"]


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
        self.params = {id(m.weight): m.weight for m in weight_quantized_layers(model).values()}
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
