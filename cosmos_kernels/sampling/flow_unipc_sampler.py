"""`FlowUniPCSampler`: the rectified-flow UniPC loop for one fixed latent shape, with no host sync."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from cosmos_kernels.sampling.flow_unipc import (
    check_net_output,
    flow_unipc_coefficients,
    flow_unipc_schedule,
    flow_unipc_step,
    net_times,
)

NetFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


class FlowUniPCSampler:
    """The official rectified-flow UniPC (see `flow_unipc`) over latents of one fixed shape, sync-free.

    At construction it computes the schedule and the float32 coefficient table on `device` (the corrector's
    2x2 solves run there, as in the official scheduler), and the per-step network times. `run()` then issues
    only tensor ops: the whole loop, and the network passes with it if they are sync-free, can be captured in
    one CUDA graph and replayed (`state` is the static input buffer `run` copies the noise into). It equals
    `sample_flow_unipc()` bit for bit on the same device.

    Contract with the network: `run(net_fn, noise)` calls `net_fn(x, t, k)` once per step k = 0 .. num_steps - 1,
    in order: `x` the float32 state of `shape`, `t` float32 `(B,)` (the integer network timestep as a float,
    or sigma for `net_time="sigma"`; the same tensor at every run), `k` the step index as a Python int (so
    per-step caches can be keyed on it). It returns the velocity `eps - x0` of x's shape, any float dtype.
    """

    def __init__(
        self,
        shape: Sequence[int],
        *,
        num_steps: int,
        shift: float = 5.0,
        num_train_timesteps: int = 1000,
        net_time: str = "timestep",
        device: torch.device | str | None = None,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) < 1 or any(s < 1 for s in shape):
            raise ValueError(f"FlowUniPCSampler: shape must be positive sizes, batch first, got {shape}")
        self.shape = shape
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.schedule = flow_unipc_schedule(num_steps, shift, num_train_timesteps=num_train_timesteps)
        self.num_steps = num_steps
        self.sigmas = self.schedule.sigmas  # float32 (num_steps + 1,), host copy
        self.timesteps = self.schedule.timesteps  # int64 (num_steps,), host copy
        self.coeffs = flow_unipc_coefficients(self.schedule, self.device)
        self._rows = self.coeffs.unbind(0)
        times = net_times(self.schedule, net_time).to(self.device)
        self._times = [times[k].expand(shape[0]).contiguous() for k in range(num_steps)]
        self.state = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self._zeros = torch.zeros(shape, dtype=torch.float32, device=self.device)

    def run(self, net_fn: NetFn, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Sample from `noise` (float32 of `shape`, unscaled; left None, `state` as it is) and return the
        float32 x0 prediction of the last step (the sample at sigma = 0). Values are not checked (that would
        sync the host); `sample_flow_unipc()` is the checked path."""
        if noise is not None:
            self._check_noise(noise)
            self.state.copy_(noise)
        x = self.state
        x_prev = m_prev = m_prev2 = self._zeros
        for k in range(self.num_steps):
            v = check_net_output("FlowUniPCSampler.run: net_fn", net_fn(x, self._times[k], k), self.shape)
            x_next, m, x_c = flow_unipc_step(k, v, x, x_prev, m_prev, m_prev2, self._rows[k])
            x, x_prev, m_prev, m_prev2 = x_next, x_c, m, m_prev
        return x

    def _check_noise(self, noise: object) -> None:
        if not isinstance(noise, torch.Tensor) or noise.dtype != torch.float32:
            raise TypeError(f"FlowUniPCSampler.run: noise must be a float32 torch.Tensor, "
                            f"got {getattr(noise, 'dtype', type(noise))}")
        if tuple(noise.shape) != self.shape:
            raise ValueError(f"FlowUniPCSampler.run: noise has shape {tuple(noise.shape)}, expected {self.shape}")
        if noise.device != self.device:
            raise ValueError(f"FlowUniPCSampler.run: noise is on {noise.device}, expected {self.device}")
