"""`Sampler`: a fixed-shape, graph-capturable sampling loop built on the fused step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from cosmos_kernels import _checks, _dispatch
from cosmos_kernels.sampling.solvers import MULTISTEP_SOLVERS, check_solver, multistep_plan
from cosmos_kernels.sampling.step import ops as step_ops
from cosmos_kernels.sampling.step import reference as step_reference

PARAMETRIZATIONS = ("rectified_flow", "x0")

NetFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def _preconditioning(parametrization: str, sigma: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, timestep) per float64 sigma, computed in `dtype` from sigma rounded to it, in the
    official order (`t = sigma / (sigma + 1)`, `1 - t`); returned as float64 (exact for fp32 values)."""
    s = sigma.to(dtype)
    if parametrization == "rectified_flow":
        t = s / (s + 1)
        out = (1 - t, -t, 1 - t, t)
    else:
        one = torch.ones_like(s)
        out = (0 * one, one, one, s)
    return tuple(v.to(torch.float64) for v in out)


class Sampler:
    """A multistep sampling loop for latents of one fixed shape `(B, C, T, H, W)`, with no host sync.

    It owns its fp32 state, its clean-frame buffers and, on `device`, the float64 coefficient table of
    the schedule (one row per network pass), and runs every step through the fused `sampler_step` op, so
    the whole loop (and the network passes with it, if they are sync-free) can be captured into one CUDA
    graph and replayed. `solver`, `schedule` and the pass count follow `sample()`; only the multistep
    solvers ("euler", "2ab", "dpmpp_2m", "3ab") run here. In fp32 it matches `sample()` (float64) to
    about 1e-6 relative error.

    The scalings (`c_skip`, `c_out`, `c_in`, the network's timestep) are computed as the official denoiser computes
    them: in `scaling_dtype` (fp32, the state's dtype there) from sigma rounded to it, so the network sees the
    official inputs bit for bit at the first pass; `torch.float64` computes them in float64 and rounds once.

    Contract with the network, `run(net_fn, ...)` calls `net_fn(net_in, timesteps, k)` once per pass
    k = 0 .. num_passes - 1, in order, and nothing else:
      - `net_in`: `(B, C, T, H, W)` in `net_dtype`, the network input `c_in(sigma_k) * x_k` with the
        conditional frames (where `cond_mask` is nonzero) replaced by their clean latent `cond_latent`.
        For `parametrization="rectified_flow"` (Cosmos): `c_in = 1 - t`, `t = sigma / (1 + sigma)`.
      - `timesteps`: `(B, T)` float32, the per-frame noise level the network is conditioned on:
        `t_k = sigma_k / (1 + sigma_k)` for rectified flow (`sigma_k` for "x0"), and 0 for
        conditional frames (their sigma is 0).
      - `k`: the pass index, a Python int (the same at every call of `run`): `self.sigmas[k]` and
        `self.timesteps[k]` are known ahead, so per-pass caches (say, timestep modulation) can be keyed on it.
    It must return the raw network output of `net_in`'s shape (any float dtype; its values at conditional
    frames are ignored): for rectified flow the velocity `v`, from which the step forms
    `x0 = (1 - t) x - t v`; for "x0" the x0 prediction itself. `run` returns the final x0 prediction (at
    sigma_min) in fp32, conditional frames equal to `cond_latent`.
    """

    def __init__(
        self,
        shape: Sequence[int],
        *,
        num_steps: int,
        sigma_min: float,
        sigma_max: float,
        rho: float = 7.0,
        solver: str = "2ab",
        schedule: str = "karras",
        parametrization: str = "rectified_flow",
        net_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        backend: str | None = None,
        scaling_dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 5 or any(s < 1 for s in shape):
            raise ValueError(f"Sampler: shape must be a positive (B, C, T, H, W), got {shape}")
        check_solver(solver, allowed=MULTISTEP_SOLVERS)
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"Sampler: parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
        if net_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"Sampler: net_dtype must be float32, bfloat16 or float16, got {net_dtype}")
        if scaling_dtype not in (torch.float32, torch.float64):
            raise TypeError(f"Sampler: scaling_dtype must be float32 or float64, got {scaling_dtype}")
        self.shape, self.net_dtype = shape, net_dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        # Chosen once, here (a GPU backend's probe runs now, never inside a CUDA-graph capture).
        self.backend = _dispatch.resolve_backend(step_ops.OP, self.device, backend, dtype=torch.float32)
        self._step_op = (step_reference.sampler_step if self.backend == "reference"
                         else step_ops.kernel_op(self.backend))
        plan = multistep_plan(solver, num_steps, sigma_min, sigma_max, rho, schedule)
        self.num_passes = plan.num_passes
        self.sigmas = plan.sigmas  # float64 (passes,), host copy for the caller's caches
        c_skip, c_out, c_in, timestep = _preconditioning(parametrization, plan.sigmas, scaling_dtype)
        self.timesteps = timestep  # float64 (passes,)
        table = torch.zeros(self.num_passes, step_reference.NUM_COLUMNS, dtype=torch.float64)
        table[:, step_reference.C_SKIP] = c_skip
        table[:, step_reference.C_OUT] = c_out
        table[:-1, step_reference.A:step_reference.B2 + 1] = plan.coeffs
        table[:-1, step_reference.C_IN_NEXT] = c_in[1:]  # the last pass has no next input (row left 0)
        self.coeffs = table.to(self.device)
        self.step_index = torch.arange(self.num_passes, dtype=torch.int64, device=self.device)
        self._timesteps32 = timestep.to(device=self.device, dtype=torch.float32)
        self._c_in0 = c_in[:1].to(device=self.device, dtype=torch.float32)
        b, c, t, h, w = shape
        self._frames_shape = (b, c, t, h * w)  # the op's (B, C, T, S) view of a latent
        self.state = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.cond_latent = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.cond_mask = torch.zeros(b, t, dtype=torch.float32, device=self.device)
        self._no_history = torch.zeros(self._frames_shape, dtype=torch.float32, device=self.device)

    def run(
        self,
        net_fn: NetFn,
        noise: torch.Tensor,
        cond_latent: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample from `noise` (the state at sigma_max, already scaled); see the class docstring.

        `cond_latent` `(B, C, T, H, W)` and `cond_mask` `(B, T)` (nonzero = clean frame) are copied into
        the sampler's buffers; left None, the previous values stay (zeros at first: no conditioning).
        Input values are not checked (that would sync the host); `sample()` is the checked path.
        """
        self._check("noise", noise, self.shape)
        self.state.copy_(noise)
        if cond_latent is not None:
            self._check("cond_latent", cond_latent, self.shape)
            self.cond_latent.copy_(cond_latent)
        if cond_mask is not None:
            self._check("cond_mask", cond_mask, (self.shape[0], self.shape[2]))
            self.cond_mask.copy_(cond_mask)
        b, _, t = self.shape[:3]
        is_cond = self.cond_mask != 0
        frame_timesteps = torch.where(is_cond, 0.0, self._timesteps32.view(-1, 1, 1))  # (passes, B, T)
        net_in = torch.where(is_cond.view(b, 1, t, 1, 1), self.cond_latent, self._c_in0 * self.state)
        net_in = net_in.to(self.net_dtype)
        x, clean = self.state.view(self._frames_shape), self.cond_latent.view(self._frames_shape)
        prev = prev2 = self._no_history
        x0 = x
        for k in range(self.num_passes):
            out = net_fn(net_in, frame_timesteps[k], k)
            if not isinstance(out, torch.Tensor) or out.shape != self.shape:
                raise ValueError(f"Sampler.run: net_fn returned {getattr(out, 'shape', type(out).__name__)}, "
                                 f"expected shape {self.shape} (x's shape)")
            if out.dtype not in _checks.KERNEL_DTYPES:
                out = out.float()
            x0, x, net4 = self._step_op(step_ops.frames(out), x, prev, prev2, clean, self.cond_mask, self.coeffs,
                                        self.step_index[k:k + 1])
            net_in = net4.view(self.shape)
            if net_in.dtype != self.net_dtype:
                net_in = net_in.to(self.net_dtype)
            prev, prev2 = x0, prev
        return x0.view(self.shape)

    def _check(self, name: str, t: object, shape: tuple[int, ...]) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"Sampler.run: {name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"Sampler.run: {name} has shape {tuple(t.shape)}, expected {shape}")
        if t.device != self.device:
            raise ValueError(f"Sampler.run: {name} is on {t.device}, expected {self.device}")
