"""Mamba-2 mixer with the SSD scan in pure PyTorch.

Sources: Dao & Gu, "Transformers are SSMs" (Mamba-2, arXiv 2405.21060), §6-7 and Listing 1
(the minimal SSD); the block layout of ``mamba_ssm.modules.mamba2.Mamba2``; Nemotron-H
(arXiv 2504.03624) for the hybrid-model conventions. See docs/models_and_data.md.

Per head h (group g = h // (H/G), heads contiguous per group), with dt_t = softplus(dt_raw + dt_bias)
and A_h = -exp(A_log_h):

    h_t = exp(dt_t A_h) h_{t-1} + dt_t x_t ⊗ B_{t,g}        (state P × N)
    y_t = h_t C_{t,g} + D_h x_t

Only ``in_proj`` and ``out_proj`` are GEMMs (``nn.Linear``, quantizable). The causal conv, the
scan and the gated norm run with autocast disabled, in one of two ways (``ssd_impl``,
models/mamba_ssm_ops.py): ``torch`` computes them in at least float32 (``ssd_chunked``, our
``RMSNorm``); ``triton`` runs them as ``mamba_ssm``'s CUDA path does — conv1d (causal-conv1d's
``causal_conv1d_fn`` where installed, else ``F.conv1d``) and the scan inputs x, B, C in the
activation dtype (bf16 under autocast), dt, A, D and ``dt_bias`` in float32, the softplus and
float32 accumulation inside ``mamba_chunk_scan_combined``, and the gated norm computed in float32
(``rmsnorm_fn`` or ours) with its output in the activation dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mamba_ssm_ops import causal_conv1d_kernel, check_ssd_impl, mamba_ssm_kernels, resolve_ssd_impl


def causal_conv_silu(xbc: Tensor, weight: Tensor, bias: Tensor, fused: Callable | None = None) -> Tensor:
    """SiLU of the depthwise causal conv1d along the sequence (Mamba-2 §7, mamba_ssm's ``Mamba2``):
    ``y[:, t, c] = silu(bias[c] + Σ_k weight[c, 0, k] · xbc[:, t − K + 1 + k, c])`` with K taps and zeros
    before the start; ``xbc`` (b, l, d), ``weight`` (d, 1, K). ``fused``: causal-conv1d's
    ``causal_conv1d_fn`` (``causal_conv1d_kernel``), handed (b, d, l) channel-last as ``Mamba2`` hands it
    the split of ``in_proj``'s output; else ``F.conv1d`` padded K − 1 on both sides, cropped to l."""
    if fused is not None:
        return fused(xbc.transpose(1, 2), weight.squeeze(1), bias, activation="silu").transpose(1, 2)
    y = F.conv1d(xbc.transpose(1, 2), weight, bias, padding=weight.size(-1) - 1, groups=xbc.size(-1))
    return F.silu(y[..., : xbc.size(1)].transpose(1, 2))


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019) computed in at least float32, optionally gated and group-wise.

    ``y = x / sqrt(mean(x^2) + eps) * w``, the mean taken over groups of ``group_size`` channels
    (the whole channel dimension by default). With a gate ``z`` the input is gated *before*
    normalising, ``norm(x * silu(z)) * w`` (mamba_ssm ``RMSNormGated(norm_before_gate=False)``).
    """

    def __init__(self, dim: int, eps: float = 1e-5, group_size: int | None = None) -> None:
        super().__init__()
        group_size = dim if group_size is None else group_size
        if dim % group_size:
            raise ValueError(f"RMSNorm dim {dim} is not divisible by group_size {group_size}")
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, gate: Tensor | None = None) -> Tensor:
        dtype = x.dtype
        compute = torch.promote_types(dtype, torch.float32)
        x = x.to(compute)
        if gate is not None:
            x = x * F.silu(gate.to(compute))
        grouped = x.unflatten(-1, (-1, self.group_size))
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return (grouped.flatten(-2) * self.weight.to(compute)).to(dtype)


def segsum(a: Tensor) -> Tensor:
    """Stable segment sum: ``out[..., i, j] = sum_{k=j+1..i} a[..., k]`` for i >= j, else -inf.

    ``exp(segsum(dt*A))`` is the 1-semiseparable decay matrix L of Mamba-2 §6 (Listing 1).
    """
    t = a.size(-1)
    a = a[..., None].expand(*a.shape, t)
    strict = torch.tril(torch.ones(t, t, dtype=torch.bool, device=a.device), diagonal=-1)
    sums = torch.cumsum(a.masked_fill(~strict, 0), dim=-2)
    lower = torch.tril(torch.ones(t, t, dtype=torch.bool, device=a.device))
    return sums.masked_fill(~lower, -torch.inf)


def _expand_groups(bc: Tensor, n_heads: int) -> Tensor:
    """(b, l, G, N) -> (b, l, H, N): head h reads group h // (H/G) (contiguous heads per group).

    This expansion is what the widely copied G=1 minimal SSD omits: its einsum sums over groups.
    """
    return bc.repeat_interleave(n_heads // bc.size(2), dim=2)


def ssd_chunked(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk_size: int
) -> Tensor:
    """SSD scan by chunks (Mamba-2 §6, Listing 1, corrected for G > 1).

    Shapes: x (b, l, H, P), dt (b, l, H) after softplus, A (H,) negative, B and C (b, l, G, N),
    D (H,). Returns y (b, l, H, P). Computes in the dtype of ``x`` (callers pass float32 or
    float64). A length that is not a multiple of ``chunk_size`` is padded at the end with zeros
    and cropped, which is exact by causality.
    """
    b, l, h, p = x.shape
    pad = (-l) % chunk_size
    Bh, Ch = _expand_groups(B, h), _expand_groups(C, h)
    xdt, adt = x * dt[..., None], dt * A
    if pad:
        xdt, Bh, Ch = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xdt, Bh, Ch))
        adt = F.pad(adt, (0, 0, 0, pad))
    c = (l + pad) // chunk_size
    xdt, Bh, Ch = (t.reshape(b, c, chunk_size, h, -1) for t in (xdt, Bh, Ch))
    adt = adt.reshape(b, c, chunk_size, h).permute(0, 3, 1, 2)  # b h c l
    a_cum = torch.cumsum(adt, dim=-1)

    # 1. outputs within each chunk (the quadratic, attention-like form)
    decay = torch.exp(segsum(adt))  # b h c l s
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Ch, Bh, decay, xdt)
    # 2. state at the end of each chunk from that chunk's inputs
    decay_states = torch.exp(a_cum[..., -1:] - a_cum)  # b h c l
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bh, decay_states, xdt)
    # 3. recurrence between chunks (zero initial state)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    decay_chunk = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))  # b h c+1 c+1
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)[:, :-1]
    # 4. contribution of the state entering each chunk
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Ch, states, torch.exp(a_cum))
    y = (y_diag + y_off).reshape(b, c * chunk_size, h, p)[:, :l]
    return y + D[:, None] * x


def ssd_naive(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """Step-by-step reference recurrence for ``ssd_chunked`` (same shapes; use float64 in tests).

    ``h_t = exp(dt_t A_h) h_{t-1} + dt_t x_t ⊗ B_{t,g}``, ``y_t = h_t C_{t,g} + D_h x_t``,
    g = h // (H/G).
    """
    b, l, h, p = x.shape
    group = torch.arange(h, device=x.device) // (h // B.size(2))
    state = x.new_zeros(b, h, p, B.size(-1))
    ys = []
    for t in range(l):
        Bt, Ct = B[:, t, group], C[:, t, group]  # b h n
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ct) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1)


def ssd(
    x: Tensor, dt: Tensor, dt_bias: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk_size: int,
    impl: str = "torch",
) -> Tensor:
    """The SSD scan from the raw ``dt`` (before ``dt_bias`` and the softplus), shapes as
    ``ssd_chunked`` with ``dt_bias`` (H,); ``impl`` in {"torch", "triton"} (``resolve_ssd_impl``).

    ``torch``: ``ssd_chunked(x, softplus(dt + dt_bias), A, B, C, D)`` in the dtype of ``x``.
    ``triton``: ``mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias,
    dt_softplus=True)`` (mamba_ssm's Mamba2 calls it so): x, B, C in their dtype, the bias, softplus,
    decays and sums in float32 inside the kernels, y in the dtype of ``x``.
    """
    if impl == "torch":
        return ssd_chunked(x, F.softplus(dt + dt_bias), A, B, C, D, chunk_size)
    if impl != "triton":
        raise ValueError(f"ssd impl must be 'torch' or 'triton' (resolved), got {impl!r}")
    scan, _ = mamba_ssm_kernels()
    return scan(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, dt_softplus=True)


def _no_weight_decay(p: nn.Parameter) -> nn.Parameter:
    p._no_weight_decay = True
    return p


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer: in_proj → [z | xBC | dt]; causal depthwise conv + SiLU on xBC; SSD; D skip;
    group-wise gated RMSNorm ``norm(y · silu(z)) · w``; out_proj.

    ``in_proj``: d_model → 2·d_inner + 2·G·N + H, ``out_proj``: d_inner → d_model, with
    d_inner = H·P. Init (mamba_ssm): dt log-uniform in [dt_min, dt_max] floored at 1e-4 and
    stored through the inverse softplus in ``dt_bias``; A_log = log(U(1, 16)); D = 1. A_log, D
    and dt_bias carry ``_no_weight_decay = True``. ``ssd_impl`` in {"auto", "torch", "triton"}
    picks the scan (module doc, models/mamba_ssm_ops.py); with the triton scan,
    ``fused_gated_norm`` runs the gated norm as mamba_ssm's ``rmsnorm_fn`` (else ours) and
    ``fused_causal_conv`` the conv and its SiLU as causal-conv1d's kernel where installed.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        n_groups: int,
        d_state: int,
        d_conv: int = 4,
        chunk_size: int = 256,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        ssd_impl: str = "auto",
        fused_gated_norm: bool = True,
        fused_causal_conv: bool = True,
    ) -> None:
        super().__init__()
        if n_heads % n_groups:
            raise ValueError(f"mamba n_heads {n_heads} is not divisible by n_groups {n_groups}")
        check_ssd_impl(ssd_impl)
        self.n_heads, self.head_dim, self.n_groups, self.d_state = n_heads, head_dim, n_groups, d_state
        self.d_inner = n_heads * head_dim
        self.chunk_size = chunk_size
        self.ssd_impl, self.fused_gated_norm, self.fused_causal_conv = ssd_impl, fused_gated_norm, fused_causal_conv
        conv_dim = self.d_inner + 2 * n_groups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + n_heads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)
        dt = torch.exp(torch.rand(n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = _no_weight_decay(nn.Parameter(dt + torch.log(-torch.expm1(-dt))))
        self.A_log = _no_weight_decay(nn.Parameter(torch.log(torch.empty(n_heads).uniform_(1, 16))))
        self.D = _no_weight_decay(nn.Parameter(torch.ones(n_heads)))
        self.norm = RMSNorm(self.d_inner, eps=1e-5, group_size=self.d_inner // n_groups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, u: Tensor) -> Tensor:
        """u (b, l, d_model) -> (b, l, d_model)."""
        return self.out_proj(self.mix(self.in_proj(u)))

    def mix(self, zxbcdt: Tensor) -> Tensor:
        """Everything between the two GEMMs: (b, l, in_proj width) -> (b, l, d_inner), in the dtype
        of ``zxbcdt``. Autocast is off inside; the dtypes are chosen per ``ssd_impl`` (module doc)."""
        b, l, _ = zxbcdt.shape
        impl = resolve_ssd_impl(self.ssd_impl, zxbcdt.device)
        act = zxbcdt.dtype if impl == "triton" else torch.promote_types(zxbcdt.dtype, torch.float32)
        fp32 = torch.promote_types(act, torch.float32)  # dt, A, D, dt_bias
        gn = self.n_groups * self.d_state
        with torch.autocast(device_type=zxbcdt.device.type, enabled=False):
            z, xbc, dt = zxbcdt.to(act).split([self.d_inner, self.d_inner + 2 * gn, self.n_heads], -1)
            w, bias = self.conv1d.weight.to(act), self.conv1d.bias.to(act)
            fused = causal_conv1d_kernel(w.size(-1)) if impl == "triton" and self.fused_causal_conv else None
            xbc = causal_conv_silu(xbc, w, bias, fused)
            x, B, C = xbc.split([self.d_inner, gn, gn], -1)
            y = ssd(
                x.reshape(b, l, self.n_heads, self.head_dim),
                dt.to(fp32),
                self.dt_bias.to(fp32),
                -torch.exp(self.A_log.to(fp32)),
                B.reshape(b, l, self.n_groups, self.d_state),
                C.reshape(b, l, self.n_groups, self.d_state),
                self.D.to(fp32),
                self.chunk_size,
                impl,
            ).reshape(b, l, self.d_inner)
            if impl == "triton" and self.fused_gated_norm:
                rmsnorm_fn = mamba_ssm_kernels()[1]
                y = rmsnorm_fn(y, self.norm.weight, None, z=z, eps=self.norm.eps, group_size=self.norm.group_size,
                               norm_before_gate=False)
            else:
                y = self.norm(y, gate=z)
        return y.to(zxbcdt.dtype)
