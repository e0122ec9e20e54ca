"""The specification of the fused sampler step, in plain PyTorch (no host synchronisation).

Between two network passes of a multistep sampler, for latents `(B, C, T, H, W)` with a per-frame
conditioning mask `(B, T)` (nonzero = a clean, conditional frame), and the coefficient row
`coeffs[step]` = `(c_skip, c_out, a, b0, b1, b2, c_in_next, unused)`:

    x0     = where(cond, clean, c_skip * x + c_out * v)           # v: the network's raw output
    x_next = a * x + b0 * x0 + b1 * x0_prev + b2 * x0_prev2       # terms with a zero coefficient are skipped
    net_in = where(cond, clean, c_in_next * x_next)               # the next network input

For rectified flow (Cosmos), `t = sigma / (1 + sigma)`, `c_skip = 1 - t`, `c_out = -t`, `c_in = 1 - t`.
Arithmetic is fp32 (float64 for float64 state); `x0`, `x_next` have the state's dtype (x's), `net_in`
the network's (v's). `step` is a one-element integer tensor, clamped to the table's rows.
"""

from __future__ import annotations

import torch

NUM_COLUMNS = 8
C_SKIP, C_OUT, A, B0, B1, B2, C_IN_NEXT = range(7)


def sampler_step(
    v: torch.Tensor,
    x: torch.Tensor,
    x0_prev: torch.Tensor,
    x0_prev2: torch.Tensor,
    cond_latent: torch.Tensor,
    cond_mask: torch.Tensor,
    coeffs: torch.Tensor,
    step: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    index = step.reshape(1).long().clamp(0, coeffs.shape[0] - 1)
    c = coeffs.index_select(0, index)[0].to(compute)  # selected on the device: no host round trip
    b, _, t = x.shape[:3]
    cond = (cond_mask != 0).reshape(b, 1, t, *([1] * (x.dim() - 3)))
    xf, clean = x.to(compute), cond_latent.to(compute)
    x0 = torch.where(cond, clean, c[C_SKIP] * xf + c[C_OUT] * v.to(compute))
    x_next = c[A] * xf + c[B0] * x0
    x_next = x_next + torch.where(c[B1] != 0, c[B1] * x0_prev.to(compute), 0.0)
    x_next = x_next + torch.where(c[B2] != 0, c[B2] * x0_prev2.to(compute), 0.0)
    net_in = torch.where(cond, clean, c[C_IN_NEXT] * x_next)
    return x0.to(x.dtype), x_next.to(x.dtype), net_in.to(v.dtype)
