"""`CosmosPolicy`: an official Cosmos Policy checkpoint in, action chunks out.

One action query (spec 3-4): preprocess the camera images as the official server does, encode the clean prefix of the
latent video with the VAE, write the normalised proprio into its latent frame, then denoise the whole latent video
from `arch_invariant_noise(seed) * sigma_max` with the official 2ab sampler (5 steps, 10 for ALOHA, sigma 80 -> 4),
keeping the conditional frames clean. The action chunk, the value and (on request) the future images are read from
the sample. A Cosmos-Predict2.5 network (Reason1 text projection) is sampled as a rectified flow instead (`flow.py`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cosmos_kernels.sampling import arch_invariant_noise, sample

from .. import profiling
from ..model import CosmosDiT
from ..model import layout as L
from ..model.text import TextEmbeddings
from ..model.vae import PolicyVAE
from .device import check_fp8, resolve_device
from .files import CheckpointFiles, find_checkpoint_files
from .flow import attach_projection, check_shift, check_variant, network_variant, sample_flow
from .graphs import ChunkGraphs
from .observation import Checked, check_observation, prepare, synthetic_observation
from .observation import Prepared as _Prepared
from .planning import check_candidates, conditioned_x0_fn, plan_by_policy_value, plan_with_model
from .seeds import SEED_LIMIT, SeedCounter, check_seed

__all__ = ["CosmosPolicy", "SEED_LIMIT", "check_fp8", "resolve_device"]


class CosmosPolicy:
    """Observation -> action chunk for a LIBERO, RoboCasa or ALOHA Cosmos Policy checkpoint.

    Observations are dicts as the official `get_action` receives them: the suite's camera images (uint8 H x W x 3:
    LIBERO `primary_image`, `wrist_image`; RoboCasa adds `secondary_image`; ALOHA `primary_image`, `left_wrist_image`,
    `right_wrist_image`), `proprio` and `task_description`.

    Seeds follow the official rule (cosmos_policy/policy/seeds.py): every query without an explicit seed uses `seed`,
    and best-of-N candidate i uses `seed + i`. `seed_step=1` seeds the k-th query since loading (or `reset()`) with
    `seed + k` instead. A query with an explicit seed uses it and leaves the count alone.

    `graphs` holds the captured CUDA graphs of the chunk (`ChunkGraphs`, None when the chunk runs eagerly);
    `cond_frames` (T,) marks the clean latent frames of an action query, `cond_mask` is the same as the network's
    (1, 1, T, 1, 1) float mask. `variant` is "predict2" or "predict2.5" (from the network); `shift` is the
    Predict2.5 sampler's shift (None for Predict2).
    """

    def __init__(self, network, vae: PolicyVAE, text: TextEmbeddings, statistics: L.DatasetStatistics,
                 layout: L.SuiteLayout, *, seed: int = 0, seed_step: int = 0, cuda_graph: bool | None = None,
                 trained_with_image_aug: bool = True, num_steps: int | None = None, image_size: int = L.IMAGE_SIZE,
                 shift: float | None = None):
        self.network = network.eval().requires_grad_(False)
        self.variant = network_variant(network)
        self.shift = check_shift(shift, self.variant)
        if self.shift is not None:
            attach_projection(text, self.network)
        self.vae = vae.for_backend(network.backend)  # the fused network gets the fused VAE
        self.text, self.statistics, self.layout = text, statistics, layout
        self.device, self.dtype = network.device, network.dtype
        self.trained_with_image_aug = trained_with_image_aug
        self.image_size = image_size  # 224 for every official checkpoint; tiny test checkpoints may use less
        self.num_steps = num_steps if num_steps is not None else layout.num_steps
        if statistics.action_dim != layout.action_dim or statistics.proprio_dim != layout.proprio_dim:
            raise ValueError(
                f"dataset statistics: {layout.name} needs {layout.action_dim} action and {layout.proprio_dim} proprio "
                f"dims, the statistics have {statistics.action_dim} and {statistics.proprio_dim}"
            )
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA device, the policy runs on {self.device}")
        use_graph = self.device.type == "cuda" if cuda_graph is None else bool(cuda_graph)
        self.graphs = ChunkGraphs(self) if use_graph else None
        self._seed_counter = SeedCounter(seed, seed_step)
        self._contexts: OrderedDict[tuple[str, ...], torch.Tensor] = OrderedDict()
        t = layout.state_t
        self.cond_frames = torch.zeros(t, dtype=torch.bool, device=self.device)
        self.cond_frames[: layout.num_conditional_frames] = True
        self.cond_mask = self.cond_frames.to(torch.float32).view(1, 1, t, 1, 1)

    # -- loading --------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path, *, suite: str | None = None, vae=None, device=None, dtype=None,
                        backend: str = "fused", cuda_graph: bool | None = None, seed: int = 0, seed_step: int = 0,
                        text_encoder=None, trained_with_image_aug: bool = True,
                        num_steps: int | None = None, network_config=None, fp8: bool = False,
                        variant: str | None = None, shift: float | None = None, text_embeddings=None,
                        statistics=None) -> CosmosPolicy:
        """Load an official checkpoint directory (or Hugging Face repo id), or one written by
        `cosmos_policy.testing.write_tiny_checkpoint`. `vae`: the Wan2.1 VAE weights (the official
        `tokenizer/tokenizer.pth` of nvidia/Cosmos-Predict2-2B-Video2World, or diffusers format), looked for in the
        checkpoint directory when not given. `device` defaults to CUDA when available, `dtype` to bf16 on CUDA and
        fp32 on the CPU. `cuda_graph=None` captures the action chunk in a CUDA graph on CUDA devices.
        `network_config` (a `DiTConfig`) overrides the network size the directory implies. `fp8=True` runs the
        blocks' token GEMMs in FP8 e4m3 (approximate; the fused backend on the CPU, or on a GPU of compute capability
        8.9 or newer in bf16: a `ValueError` says what is missing elsewhere). `variant` ("predict2", "predict2.5") is
        read from the checkpoint's keys when None; given, it must match them. Cosmos-Predict2.5
        (a `robot/policy/<suite>` folder of nvidia/Cosmos-Predict2.5-2B) samples with the official UniPC at `shift`
        (default 5) and reads Reason1 embeddings (`reason1_embeddings.pkl`). `text_embeddings` / `statistics`: the
        embeddings pickle / dataset statistics JSON when not in the directory (local, or `org/repo/file` on the Hub).

        The checkpoint's keys and shapes are checked against the network built on the meta device before any
        weights are allocated: a checkpoint of another size is one short `ValueError`."""
        from ..model.loading import load_network

        device = resolve_device(device)
        files: CheckpointFiles = find_checkpoint_files(path, suite=suite, vae=vae, variant=variant,
                                                       text_embeddings=text_embeddings, statistics=statistics)
        dtype = dtype if dtype is not None else (torch.bfloat16 if device.type == "cuda" else torch.float32)
        config = network_config if network_config is not None else files.network_config
        if fp8:
            check_fp8(backend, device, dtype)
        with profiling.nvtx_range("load.network"):
            network = load_network(files.network, config, backend=backend).to(device=device, dtype=dtype)
        network.fp8 = bool(fp8)
        check_variant(network, variant, files.network)
        with profiling.nvtx_range("load.vae"):
            policy_vae = PolicyVAE.from_file(files.vae, device=device, dtype=dtype, backend=backend)
        return cls(
            network,
            policy_vae,
            TextEmbeddings.from_file(files.t5_embeddings, encoder=text_encoder, device=device, dtype=dtype),
            L.DatasetStatistics.from_json(files.statistics),
            L.get_layout(files.suite),
            seed=seed, seed_step=seed_step, cuda_graph=cuda_graph, trained_with_image_aug=trained_with_image_aug,
            num_steps=num_steps,
            image_size=files.image_size, shift=shift,
        )

    def with_backend(self, backend: str) -> CosmosPolicy:
        """The same policy with another backend ("fused" or "reference"), sharing the weights; seeded 0 anew."""
        with torch.device("meta"):
            network = CosmosDiT(self.network.config, backend=backend)
        network.load_state_dict(self.network.state_dict(), assign=True)
        network.fp8 = self.network.fp8 and backend == "fused"  # FP8 GEMMs exist in the fused network only
        return CosmosPolicy(network, self.vae, self.text, self.statistics, self.layout,
                            trained_with_image_aug=self.trained_with_image_aug, num_steps=self.num_steps,
                            image_size=self.image_size, shift=self.shift)

    # -- public API -----------------------------------------------------------------------------------------------

    def infer(self, obs: Mapping, seed: int | None = None, return_future_images: bool = False) -> dict:
        """One observation -> {"actions": (chunk, action_dim) float32, "value", "seed", "timing" (ms per stage),
        and "future_images" ({camera: uint8 (224, 224, 3)}) when asked}. Without `seed` the query takes the next
        value of the seed rule (`seed + k`); with it, that seed, and the count does not move.

        Raises ValueError naming the key for a missing camera, a wrong image shape or dtype, a wrong proprio length
        or an unknown instruction, before anything in the policy changes."""
        return self.infer_batch([obs], None if seed is None else [seed], return_future_images)[0]

    def infer_batch(self, observations: Sequence[Mapping], seeds: Sequence[int] | None = None,
                    return_future_images: bool = False) -> list[dict]:
        """Many observations as one batch (sample i uses its own seed, so it equals `infer(obs_i, seeds[i])`).
        Without `seeds`, sample i takes the seed rule's next values in order (they count as len(observations)
        queries)."""
        timing: dict[str, float] = {}
        start = clock = self.clock()
        if not isinstance(observations, Sequence) or isinstance(observations, (str, bytes)) or not observations:
            raise ValueError("observations: expected a non-empty list of observation dicts")
        checked = [self.check_observation(obs, f"obs[{i}]" if len(observations) > 1 else "obs")
                   for i, obs in enumerate(observations)]
        self.text.check_known([c[2] for c in checked])
        seeds = self.take_seeds(seeds, len(observations))
        with profiling.nvtx_range("preprocess"):
            prepared = self.prepare(checked)
        clock = self.lap(timing, "preprocess", clock)
        result = self.run_query(prepared, seeds, return_future_images, timing, clock)
        timing["total"] = (self.clock() - start) * 1e3
        return result

    def plan(self, obs: Mapping, num_candidates: int = 8, seed: int | None = None,
             batch_size: int | None = None, *, planning_model=None, planning_config=None) -> dict:
        """Best-of-N over the action chunks of seeds seed, seed+1, ... (without `seed` the base seed is the seed
        rule's next value: the plan counts as one query). Candidates run as one batch, or in sub-batches of at most
        `batch_size` samples per network pass (the same result).

        With `planning_model` (a `cosmos_policy.PlanningModel`) this is the official protocol (spec 4.7):
        the future state of each candidate and its value by ensembles of the planning network, aggregated as
        `planning_config` (a `PlanningConfig`, default the official majority_mean 3 x 5 ensembles) says; the base
        seed is kept unless another value is strictly higher. Without it, candidates are ranked by the value each
        action query predicts alongside its actions; ties keep the lowest seed."""
        check_candidates(num_candidates)
        if planning_model is not None:
            return plan_with_model(self, obs, num_candidates, seed, planning_model, planning_config, batch_size)
        return plan_by_policy_value(self, obs, num_candidates, seed, batch_size)

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode: the next query is query 0 again, seeded `seed` (the loading seed when None).
        The exact caches and captured graphs are kept."""
        self._seed_counter.reset(seed)

    def warmup(self, batch_sizes: Sequence[int] = (1,), instructions: Sequence[str] | None = None) -> dict:
        """Pay now what a first query would: Triton compilation, the backend probes, attention's backend choice,
        the exact caches of each instruction and, on CUDA, the graph capture of each (batch size, instruction).

        Runs one synthetic observation of the right shapes per batch size and instruction (default: the first
        instruction of the checkpoint's embeddings) with explicit seeds, so the seed rule does not move. Returns
        {"batch_sizes", "instructions", "runs": [{"instruction", "batch_size", "ms"}], "total_ms", "cuda_graphs",
        "graph_failures", "next_seed"}."""
        sizes = list(batch_sizes)
        if not sizes or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in sizes):
            raise ValueError(f"batch_sizes: expected ints >= 1, got {batch_sizes!r}")
        if instructions is None:
            known = self.text.instructions()
            if not known:
                raise ValueError("instructions: the checkpoint has no T5 embeddings; name the instructions to warm up")
            instructions = known[:1]
        elif isinstance(instructions, str):
            instructions = [instructions]
        instructions = list(instructions)
        self.text.check_known(instructions, key="instructions")
        start, runs = time.perf_counter(), []
        for instruction in instructions:
            obs = self.synthetic_observation(instruction)
            for size in sizes:
                began = time.perf_counter()
                self.infer_batch([obs] * int(size), seeds=[0] * int(size))
                runs.append({"instruction": instruction, "batch_size": int(size),
                             "ms": (time.perf_counter() - began) * 1e3})
        graphs = self.graphs
        return {"batch_sizes": [int(b) for b in sizes], "instructions": instructions, "runs": runs,
                "total_ms": (time.perf_counter() - start) * 1e3, "cuda_graphs": len(graphs) if graphs else 0,
                "graph_failures": graphs.failures if graphs else 0, "next_seed": self.next_seed}

    def synthetic_observation(self, instruction: str | None = None) -> dict:
        """An observation of the suite's shapes: grey images, the proprio at the middle of its range."""
        instruction = instruction if instruction is not None else self.text.instructions()[0]
        return synthetic_observation(self.layout, self.statistics, instruction)

    @property
    def next_seed(self) -> int:
        """The seed the next query without an explicit one will use."""
        return self._seed_counter.next

    def clear_caches(self) -> None:
        """Free every exact cache (network K/V, modulation, RoPE; VAE prefix states; text contexts) and every
        captured graph, which read those caches."""
        clear = getattr(self.network, "clear_caches", None)
        if callable(clear):
            clear()
        self.vae.clear_cache()
        self._contexts.clear()
        if self.graphs is not None:
            self.graphs.invalidate()

    def cache_info(self) -> dict:
        info = {"contexts": len(self._contexts), "next_seed": self.next_seed}
        info.update(self.text.cache_info())
        info.update(self.vae.cache_info())
        for name in ("kv_cache", "modulation_cache", "rope_cache"):
            cache = getattr(self.network, name, None)
            if cache is not None:
                info[name] = len(cache)
        if self.graphs is not None:
            info["cuda_graphs"] = len(self.graphs)
        return info

    # -- an action query in stages: `infer_batch` runs them in order, the planners (planning.py) compose them ------

    def check_observation(self, obs, name: str) -> Checked:
        """The observation's cameras, proprio and instruction, checked against the suite (errors name `name`)."""
        return check_observation(obs, self.layout, name)

    def take_seeds(self, seeds, count: int) -> list[int]:
        """`seeds` checked, or (None) the seed rule's next `count` values."""
        if seeds is None:  # the seed rule moves only once the inputs are known to be good
            return self._seed_counter.take(count)
        if len(seeds) != count:
            raise ValueError(f"seeds: expected {count} seeds, got {len(seeds)}")
        return [check_seed(s, "seed") for s in seeds]

    def prepare(self, checked: list[Checked]) -> _Prepared:
        """Checked observations -> images and normalised proprio on the policy's device, as one batch."""
        return prepare(checked, self.layout, self.statistics, self.device, self.dtype,
                       trained_with_image_aug=self.trained_with_image_aug, image_size=self.image_size)

    def context(self, instructions: list[str]) -> torch.Tensor:
        """A stable tensor per instruction tuple, so the network's cross-attention K/V cache hits across queries.
        Made outside inference mode: a normal tensor's version counter shows an in-place edit at no cost."""
        if len(set(instructions)) == 1:
            with torch.inference_mode(False):
                return self.text.get(instructions[0])  # (1, N, D) broadcasts over the batch
        key = tuple(instructions)
        if key not in self._contexts:
            with torch.inference_mode(False):
                self._contexts[key] = self.text.batch(instructions)
            while len(self._contexts) > 8:
                self._contexts.popitem(last=False)
        self._contexts.move_to_end(key)
        return self._contexts[key]

    # -- one batched action query ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _denoise(self, prepared: _Prepared, seeds: list[int], keep_state: bool, timing: dict, clock: float):
        """The action query's sample: (latents (B, C, T, H, W), prefix latents, encoder state, clock)."""
        layout, batch = self.layout, len(seeds)
        with profiling.nvtx_range("text"):
            context = self.context(prepared.instructions)
            versions = getattr(self.network, "text_versions", None)
            if versions is not None:  # an inference-mode tensor's edit is found here, once per query
                versions.refresh(context)
        clock = self.lap(timing, "text", clock)

        with profiling.nvtx_range("vae_encode"):
            encoded = self.vae.encode_prefix(prepared.images, keep_state=keep_state)
            prefix, encoder_state = encoded if keep_state else (encoded, None)
            h, w = prefix.shape[-2:]
            prefix = prefix.expand(batch, -1, -1, -1, -1)
            gt = torch.zeros(batch, prefix.shape[1], layout.state_t, h, w, device=self.device)
            gt[:, :, : layout.num_conditional_frames] = prefix
            gt = L.inject_proprio(gt, prepared.proprio, layout.proprio_index)
        clock = self.lap(timing, "vae_encode", clock)

        with profiling.nvtx_range("denoise"):
            noise = torch.cat([arch_invariant_noise(s, (1, *gt.shape[1:])) for s in seeds]).to(self.device)
            if self.shift is None:  # rectified flow starts from the unscaled noise
                noise = noise * layout.sigma_max
            if self.graphs is not None:
                latents = self.graphs.run(noise, gt, context, prepared.instructions)
            elif self.shift is not None:
                latents = sample_flow(self.network, gt, context, noise, self.cond_frames, self.cond_mask,
                                      self.num_steps, self.shift)
            else:
                latents = sample(self._x0_fn(gt, context), noise, num_steps=self.num_steps,
                                 sigma_min=layout.sigma_min, sigma_max=layout.sigma_max, solver="2ab")
        clock = self.lap(timing, "denoise", clock)
        return latents, prefix, encoder_state, clock

    def sample_candidates(self, prepared: _Prepared, seeds: list[int], timing: dict, clock: float):
        """Action samples of one observation's candidates: its images stay a batch of one (their latents are
        computed once and broadcast), the proprio and instruction repeat."""
        expanded = _Prepared(prepared.images, prepared.proprio.expand(len(seeds), -1),
                             prepared.instructions * len(seeds))
        latents, _, _, clock = self._denoise(expanded, seeds, False, timing, clock)
        return latents, clock

    @torch.no_grad()
    def run_query(self, prepared: _Prepared, seeds: list[int], return_future_images: bool, timing: dict,
                  clock: float) -> list[dict]:
        """One batched action query: sample i with seeds[i] -> its result dict (as `infer` returns it)."""
        layout = self.layout
        latents, prefix, encoder_state, clock = self._denoise(prepared, seeds, return_future_images, timing, clock)

        with profiling.nvtx_range("postprocess"):
            actions = L.extract_actions(latents, layout.action_index, layout.chunk_size, layout.action_dim)
            actions = self.statistics.unnormalize_actions(actions.double().cpu().numpy()).astype(np.float32)
            values = L.extract_value(latents, layout.value_index).double().cpu().numpy()
        clock = self.lap(timing, "postprocess", clock)

        futures = None
        if return_future_images:
            with profiling.nvtx_range("vae_decode"):
                futures = self._future_images(latents, prefix, encoder_state)
            clock = self.lap(timing, "vae_decode", clock)
        results = []
        for i, s in enumerate(seeds):
            out = {"actions": actions[i], "value": float(values[i]), "seed": s, "timing": timing}
            if futures is not None:
                out["future_images"] = {camera: frames[i] for camera, frames in futures.items()}
            results.append(out)
        return results

    def _x0_fn(self, gt: torch.Tensor, context: torch.Tensor):
        """The denoiser of spec 4.2 for `sample()`: sigma is a (B,) tensor on the policy's device."""
        return conditioned_x0_fn(self.network, gt, context, self.cond_frames, self.cond_mask)

    def _future_images(self, latents: torch.Tensor, prefix: torch.Tensor, encoder_state) -> dict[str, torch.Tensor]:
        """Decode the predicted future frames after restoring the placeholder frames' own VAE latents."""
        layout = self.layout
        restored = latents.clone()
        restored[:, :, :2] = prefix[:, :, :2]  # blank and proprio slots
        batch, _, _, h, w = latents.shape
        placeholders = self.vae.encode_zero_chunks(2, encoder_state, batch, h * 8, w * 8)
        restored[:, :, layout.action_index: layout.action_index + 2] = placeholders
        last = max(layout.future_camera_indices.values())
        frames = self.vae.decode(restored[:, :, : last + 1]).cpu().numpy()  # the decoder is causal
        return {camera: frames[:, (k - 1) * L.TEMPORAL_COMPRESSION + 1]
                for camera, k in layout.future_camera_indices.items()}

    # -- timing ---------------------------------------------------------------------------------------------------

    def clock(self) -> float:
        """Seconds, once the policy's device has finished its work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, timing: dict, stage: str, since: float) -> float:
        """Add the milliseconds since `since` to `timing[stage]`; returns the new clock."""
        now = self.clock()
        timing[stage] = timing.get(stage, 0.0) + (now - since) * 1e3
        return now

