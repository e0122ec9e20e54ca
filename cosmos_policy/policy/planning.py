"""Best-of-N planning with a planning checkpoint, as the official ALOHA deployment runs it (spec 4.7).

For candidate i (seed s_i = base + i) of N:
  1. an action chunk from the policy (its own sampler and step count);
  2. the future state from the planning network, the action frame clean too: an ensemble of `future_ensemble`
     samples, member j with seed s_i + j and `linspace(1, future_steps, future_ensemble)` steps (1, 3, 5);
  3. the value of each future sample with every frame but the value frame clean, except (input masking) the
     current proprio, images and action: an ensemble of `value_ensemble`, member k with seed s_i + k and
     `linspace(1, value_steps, value_ensemble)` steps (1..5);
  4. all future x value predictions of the candidate aggregated into one value (`majority_mean` by default).
The chosen candidate is the base seed's unless another value is strictly higher (the first such maximum).

Here every stage runs the N candidates (times the ensemble members of one step count) as one batch on one device,
split into sub-batches of at most `max_batch` samples; each sample keeps its own seed, so the split does not change
what is computed.

What planning asks of the policy (a `CosmosPolicy`, handed in by its `plan`): `device`, `layout`, `statistics`,
`text`, and the stages of an action query: `check_observation`, `take_seeds`, `prepare`, `context`,
`sample_candidates` (the latents of one observation's candidates), `run_query` (results as `infer` returns them),
and `clock` / `lap` for the timing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cosmos_kernels.sampling import arch_invariant_noise, sample

from ..model import layout as L
from .device import resolve_device
from .files import NETWORK_CONFIG_FILE, resolve_directory
from .seeds import SEED_LIMIT

AGGREGATIONS = ("average", "lcb", "success_vote", "majority_mean")
SUCCESS_THRESHOLD = 0.05  # a predicted value above this counts as a vote for success
LCB_BETA = 1.0


def aggregate_values(values: torch.Tensor, scheme: str = "majority_mean") -> torch.Tensor:
    """(members, B) value predictions in [0, 1] -> (B,), clipped to [0, 1].

    average: the mean; lcb: mean - std (unbiased); success_vote: the fraction above the threshold;
    majority_mean: the mean of the votes above the threshold when they are at least half, else 0."""
    if scheme not in AGGREGATIONS:
        raise ValueError(f"aggregation: expected one of {AGGREGATIONS}, got {scheme!r}")
    if values.dim() != 2 or values.shape[0] < 1:
        raise ValueError(f"values: expected (members, batch), got shape {tuple(values.shape)}")
    if scheme == "average":
        out = values.mean(0)
    elif scheme == "lcb":
        out = values.mean(0) - LCB_BETA * values.std(0)
    elif scheme == "success_vote":
        out = (values > SUCCESS_THRESHOLD).float().mean(0)
    else:
        success = values > SUCCESS_THRESHOLD
        count = success.float().sum(0)
        mean_success = torch.where(success, values, torch.zeros_like(values)).sum(0) / count.clamp(min=1)
        out = torch.where(count / values.shape[0] >= 0.5, mean_success, torch.zeros_like(mean_success))
    return out.clamp(0.0, 1.0)


def select_candidate(values) -> int:
    """The official rule: the base seed (index 0) unless some value is strictly higher; then the first maximum."""
    values = [float(v) for v in values]
    best = max(range(len(values)), key=lambda i: values[i])
    return best if values[best] > values[0] else 0


def ensemble_steps(num_steps: int, members: int) -> list[int]:
    """Steps of each ensemble member: `linspace(1, num_steps, members)` truncated to ints; no ensemble (one
    member) is the official single query with `num_steps`."""
    if members == 1:
        return [num_steps]
    return np.linspace(1, num_steps, members).astype(int).tolist()


@dataclass(frozen=True)
class PlanningConfig:
    """The official main planning configuration of the ALOHA deployment."""

    future_steps: int = 5
    future_ensemble: int = 3
    value_steps: int = 5
    value_ensemble: int = 5
    aggregation: str = "majority_mean"
    mask_current_state_action: bool = True

    def __post_init__(self) -> None:
        for name in ("future_steps", "future_ensemble", "value_steps", "value_ensemble"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation: expected one of {AGGREGATIONS}, got {self.aggregation!r}")


class PlanningModel:
    """The planning (world model + value) network. Its repository holds the network `.pt` only: the text
    embeddings, dataset statistics and VAE are the policy's."""

    def __init__(self, network) -> None:
        self.network = network.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path, *, device=None, dtype=None, backend: str = "fused",
                        network_config=None) -> PlanningModel:
        """A directory (or Hugging Face repo id) with one network `.pt` (a name with "planning" is preferred when
        there are several), or the `.pt` itself. `network_config.json` (tiny test checkpoints) sets the size."""
        from ..model.config import DiTConfig
        from ..model.loading import load_network

        local = Path(path)
        if local.is_file():
            directory, weights = local.parent, local
        else:
            directory = resolve_directory(path)
            pts = sorted(p for p in directory.iterdir() if p.suffix == ".pt")
            if not pts:
                raise FileNotFoundError(f"{directory} holds no .pt planning network checkpoint")
            weights = next((p for p in pts if "planning" in p.name.lower()), pts[0])
        config = network_config
        if config is None:
            extra_path = directory / NETWORK_CONFIG_FILE
            extra = json.loads(extra_path.read_text(encoding="utf-8")) if extra_path.is_file() else {}
            config = DiTConfig.from_dict(extra["network"]) if "network" in extra else DiTConfig.cosmos_predict2_2b()
        device = resolve_device(device)
        dtype = dtype if dtype is not None else (torch.bfloat16 if device.type == "cuda" else torch.float32)
        return cls(load_network(weights, config, backend=backend).to(device=device, dtype=dtype))


def check_candidates(num_candidates) -> None:
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
        raise ValueError(f"num_candidates: expected an int >= 1, got {num_candidates!r}")


def conditioned_x0_fn(network, gt: torch.Tensor, context: torch.Tensor, cond_frames: torch.Tensor,
                      cond_mask: torch.Tensor | None = None) -> Callable:
    """The denoiser of spec 4.2 for `sample()`: frames where `cond_frames` (T,) is set are clean (`gt`, time 0).
    `cond_mask`: the same as (1, 1, T, 1, 1) float32, passed to keep one tensor across queries for the caches."""
    cond = cond_frames.view(1, 1, -1, 1, 1)
    if cond_mask is None:
        cond_mask = cond_frames.to(torch.float32).view(1, 1, -1, 1, 1)

    def x0_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = (sigma / (sigma + 1)).float()  # rectified-flow scaling: c_in = c_skip = 1 - t, c_out = -t
        t5 = t.view(-1, 1, 1, 1, 1)
        x = x.float()
        net_in = torch.where(cond, gt, x * (1 - t5))
        timesteps = torch.where(cond_frames, 0.0, t[:, None])  # t(sigma_cond = 0) = 0
        velocity = network(net_in, timesteps, context, cond_mask).float()
        return torch.where(cond, gt, (1 - t5) * x - t5 * velocity)

    return x0_fn


def future_frames(layout: L.SuiteLayout) -> torch.Tensor:
    """Clean frames of the future-state query: the action query's plus the action frame."""
    frames = torch.zeros(layout.state_t, dtype=torch.bool)
    frames[: layout.action_index + 1] = True
    return frames


def value_frames(layout: L.SuiteLayout, mask_current_state_action: bool = True) -> torch.Tensor:
    """Clean frames of the value query: all but the value frame; input masking makes the current proprio,
    images and action noisy again, so the value is that of the future state alone."""
    frames = torch.ones(layout.state_t, dtype=torch.bool)
    frames[layout.value_index] = False
    if mask_current_state_action:
        frames[[layout.proprio_index, *layout.camera_indices.values(), layout.action_index]] = False
    return frames


class _Stage:
    """Batched sampling of one query kind with the planning network, in sub-batches of at most `max_batch`."""

    def __init__(self, network, layout: L.SuiteLayout, context: torch.Tensor, proprio: torch.Tensor,
                 cond_frames: torch.Tensor, max_batch: int) -> None:
        self.network, self.layout, self.context, self.proprio = network, layout, context, proprio
        self.cond_frames, self.max_batch = cond_frames.to(proprio.device), max_batch

    def run(self, previous: torch.Tensor, seeds: list[int], num_steps: int) -> torch.Tensor:
        """Sample (B, C, T, H, W) latents conditioned on the clean frames of `previous`, sample b with seeds[b]."""
        layout, out = self.layout, []
        for first in range(0, len(seeds), self.max_batch):
            part = seeds[first: first + self.max_batch]
            gt = previous[first: first + len(part)].float()
            gt = L.inject_proprio(gt, self.proprio.expand(len(part), -1), layout.proprio_index)
            noise = torch.cat([arch_invariant_noise(s, (1, *gt.shape[1:])) for s in part]).to(gt.device)
            x0_fn = conditioned_x0_fn(self.network, gt, self.context, self.cond_frames)
            out.append(sample(x0_fn, noise * layout.sigma_max, num_steps=num_steps, sigma_min=layout.sigma_min,
                              sigma_max=layout.sigma_max, solver="2ab"))
        return torch.cat(out)


@torch.no_grad()
def predict_values(network, layout: L.SuiteLayout, action_latents: torch.Tensor, seeds: list[int],
                   context: torch.Tensor, proprio: torch.Tensor, config: PlanningConfig,
                   max_batch: int) -> torch.Tensor:
    """Steps 2-3 for N candidates: (N, future_ensemble * value_ensemble) value predictions, future member major.

    `action_latents` (N, C, T, H, W) are the action queries' samples; `proprio` (1, dim) the normalised proprio."""
    n = len(seeds)
    future = _Stage(network, layout, context, proprio, future_frames(layout), max_batch)
    futures = [future.run(action_latents, [(s + j) % SEED_LIMIT for s in seeds], steps)
               for j, steps in enumerate(ensemble_steps(config.future_steps, config.future_ensemble))]
    stacked = torch.cat(futures)  # (future_ensemble * N): member j of candidate i at j * N + i
    value = _Stage(network, layout, context, proprio,
                   value_frames(layout, config.mask_current_state_action), max_batch)
    columns = []
    for k, steps in enumerate(ensemble_steps(config.value_steps, config.value_ensemble)):
        member_seeds = [(s + k) % SEED_LIMIT for _ in range(config.future_ensemble) for s in seeds]
        latents = value.run(stacked, member_seeds, steps)
        columns.append(L.extract_value(latents, layout.value_index).double().view(config.future_ensemble, n))
    # (value_ensemble, future_ensemble, N) -> (N, future_ensemble * value_ensemble), future member major
    return torch.stack(columns).permute(2, 1, 0).reshape(n, -1)


def plan_with_model(policy, obs, num_candidates: int, seed: int | None, planning_model: PlanningModel,
                    config: PlanningConfig | None = None, max_batch: int | None = None) -> dict:
    """`CosmosPolicy.plan` with a planning model: the protocol of this module's docstring."""
    config = config if config is not None else PlanningConfig()
    if not isinstance(planning_model, PlanningModel):
        raise TypeError(f"planning_model: expected a PlanningModel, got {type(planning_model).__name__}")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"max_batch: expected an int >= 1 or None, got {max_batch!r}")
    if planning_model.network.device != policy.device:
        raise ValueError(f"planning_model: on {planning_model.network.device}, the policy on {policy.device}")
    timing, start, clock, prepared, seeds = _begin(policy, obs, num_candidates, seed)
    step = max_batch or num_candidates
    latents = []
    for first in range(0, num_candidates, step):
        part = seeds[first: first + step]
        part_latents, clock = policy.sample_candidates(prepared, part, timing, clock)
        latents.append(part_latents)
    latents = torch.cat(latents)
    layout = policy.layout
    actions = L.extract_actions(latents, layout.action_index, layout.chunk_size, layout.action_dim)
    actions = policy.statistics.unnormalize_actions(actions.double().cpu().numpy()).astype(np.float32)
    own_values = L.extract_value(latents, layout.value_index).double().cpu().numpy()
    context = policy.context(prepared.instructions)
    predictions = predict_values(planning_model.network, layout, latents, seeds, context, prepared.proprio,
                                 config, step)
    if config.value_ensemble == 1:  # no ensemble: the official value is the first prediction as it is
        values = predictions[:, 0]
    else:
        values = aggregate_values(predictions.T, config.aggregation)
    values = values.cpu().numpy()
    clock = policy.lap(timing, "planning", clock)
    best = select_candidate(values)
    timing["total"] = (policy.clock() - start) * 1e3
    return {"actions": actions[best], "value": float(values[best]), "seed": seeds[best], "index": best,
            "candidate_values": values, "candidate_seeds": seeds, "candidate_actions": actions,
            "value_predictions": predictions.cpu().numpy(), "policy_values": own_values, "timing": timing}


def _begin(policy, obs, num_candidates: int, seed: int | None):
    """Checks, the candidates' seeds (the base seed is one query of the seed rule) and the prepared observation."""
    timing: dict[str, float] = {}
    start = clock = policy.clock()
    checked = policy.check_observation(obs, "obs")
    policy.text.check_known([checked[2]])
    base = policy.take_seeds(None if seed is None else [seed], 1)[0]
    seeds = [(base + i) % SEED_LIMIT for i in range(num_candidates)]
    prepared = policy.prepare([checked])
    clock = policy.lap(timing, "preprocess", clock)
    return timing, start, clock, prepared, seeds


def plan_by_policy_value(policy, obs, num_candidates: int, seed: int | None, batch_size: int | None) -> dict:
    """`CosmosPolicy.plan` without a planning model: candidates ranked by the value each action query predicts
    alongside its actions; the first maximum wins (the base seed on ties)."""
    from .observation import Prepared

    timing, start, clock, prepared, seeds = _begin(policy, obs, num_candidates, seed)
    step = batch_size or num_candidates
    results = []
    for first in range(0, num_candidates, step):
        part = seeds[first: first + step]
        # the images stay a batch of one: their latents are computed once and broadcast over the candidates
        expanded = Prepared(prepared.images, prepared.proprio.expand(len(part), -1), prepared.instructions * len(part))
        results += policy.run_query(expanded, part, False, timing, clock)
        clock = policy.clock()
    values = np.array([r["value"] for r in results], dtype=np.float32)
    best = int(np.argmax(values))
    timing["total"] = (policy.clock() - start) * 1e3
    return {"actions": results[best]["actions"], "value": float(values[best]), "seed": seeds[best],
            "index": best, "candidate_values": values, "candidate_seeds": seeds,
            "candidate_actions": np.stack([r["actions"] for r in results]), "timing": timing}
