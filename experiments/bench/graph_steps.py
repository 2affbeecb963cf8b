"""A few training steps of a model, eager or replayed from CUDA graphs: what the GPU checks compare
bit for bit (``layer_numerics.check_cuda_graph_two_calls``, ``run.check_cuda_graphs``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["train_steps"]


def train_steps(model: nn.Module, x: torch.Tensor, graphed: bool, steps: int = 3) -> tuple[list[float], list[torch.Tensor]]:
    """``steps`` AdamW steps (lr 1e-3) on ``mean(model(x)²)`` under bf16 autocast, the forward and
    backward run eagerly or replayed from a CUDA graph (``fp4train.cuda_graphs``, captured here);
    returns the losses and copies of the final parameters."""
    from fp4train.cuda_graphs import capture_training_graph

    device = x.device.type
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with torch.autocast(device, dtype=torch.bfloat16):
        forward = capture_training_graph(model, (x,)) if graphed else model
    losses = []
    try:
        for _ in range(steps):
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = forward(x).float().square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        if graphed:
            forward.release()
    return losses, [p.detach().clone() for p in model.parameters()]
