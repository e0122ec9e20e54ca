"""`CosmosDiT`: the Cosmos-Predict2 video DiT with its condition-mask channel (official `MinimalV1LVGDiT`).

Two implementations of one network share the parameters:
- `backend="reference"`: the official operation order in plain PyTorch (`blocks.py`), the specification;
- `backend="fused"`: the same math on `cosmos_kernels` ops (adaptive LayerNorm fused with the previous
  sub-layer's gated residual, RMSNorm), with the exact caches: cross-attention K/V per text embedding,
  modulation vectors per step (its timestep values), RoPE tables per (T, H, W). Each cache is a bounded LRU.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

import cosmos_kernels
from cosmos_policy.model import checkpoint
from cosmos_policy.model import fp8 as fp8_blocks
from cosmos_policy.model.blocks import (
    Block,
    FinalLayer,
    PatchEmbed,
    RMSNorm,
    TimestepEmbedding,
    Timesteps,
    unpatchify,
)
from cosmos_policy.model.cache import LRUCache
from cosmos_policy.model.config import DiTConfig
from cosmos_policy.model.inputs import check_dit_inputs
from cosmos_policy.model.text import text_tokens
from cosmos_policy.model.text_projection import make_crossattn_proj, project_context, project_text
from cosmos_policy.model.text_versions import TextVersions, tensor_version
from cosmos_policy.profiling import nvtx_enumerate

BACKENDS = ("fused", "reference")
MiB = 1 << 20


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


class CosmosDiT(nn.Module):
    """The Cosmos-Predict2 DiT. `forward` returns the raw network output `(B, out_channels, T, H, W)`.

    Inputs are cast to the network's parameter dtype first, as the official model does before calling its
    network (so at bf16 the timesteps are bf16-rounded before the fp32 sinusoid). `load_state_dict` takes
    official keys (with or without `net.`) or diffusers `CosmosTransformer3DModel` keys.

    The fused backend's caches are exact: cross-attention K/V are keyed by the text-embedding tensor's
    identity and version (`text_versions`: the PyTorch version counter, so an in-place change through PyTorch is
    seen; a write that bypasses the counter, through `.numpy()` or `.data`, is not: call `clear_caches()` after
    one; an inference-mode tensor has no counter: `text_versions.refresh(emb)` compares its content, once per
    query, outside the passes), and every entry that depends on the weights is keyed by the parameters' version
    counters too. Keep one tensor per instruction: a new tensor (say `emb.to(device)` on every call) is a new
    key. The modulation cache is used when the timesteps come as a CPU tensor (one entry per step, keyed by its
    values: no device sync, no per-pass work); device timesteps are computed directly. While autograd records,
    nothing is cached. Under CUDA-graph capture, entries are read (and pinned) but never created: run one eager
    forward before capturing.
    """

    def __init__(self, config: DiTConfig | None = None, backend: str = "fused", *,
                 kv_cache_bytes: int = 1024 * MiB, modulation_cache_bytes: int = 128 * MiB,
                 rope_cache_bytes: int = 64 * MiB, fp8: bool = False) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"CosmosDiT: backend must be one of {BACKENDS}, got {backend!r}")
        self.config = config = config if config is not None else DiTConfig.cosmos_predict2_2b()
        if not isinstance(config, DiTConfig):
            raise TypeError(f"CosmosDiT: config must be a DiTConfig, got {type(config).__name__}")
        self.backend, self.fp8 = backend, bool(fp8)  # fp8: the fused backend's token GEMMs in e4m3 (approximate)
        d = config.model_channels
        self.x_embedder = PatchEmbed(config)
        self.t_embedder = nn.Sequential(Timesteps(d), TimestepEmbedding(d))
        self.t_embedding_norm = RMSNorm(d, config.eps)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_blocks))
        self.final_layer = FinalLayer(config)
        self.crossattn_proj = make_crossattn_proj(config)  # Predict2.5 only (None: no module, no keys)
        self.kv_cache = LRUCache(kv_cache_bytes, "cross-attention K/V cache")
        self.modulation_cache = LRUCache(modulation_cache_bytes, "modulation cache")
        self.rope_cache = LRUCache(rope_cache_bytes, "RoPE cache")
        self._zeros: dict[tuple, torch.Tensor] = {}  # (dtype, device) -> the padding channel's zero
        self.text_versions = TextVersions()  # what the K/V cache (and CUDA graphs) key a text tensor's content by
        self.cache_epoch = 0  # bumped whenever cached tensors are freed: graphs that read them must go too
        self.fp8_weights = fp8_blocks.WeightCache()  # e4m3 GEMM weights (fp8.py), one set of weights

    # -- weights --------------------------------------------------------------------------------------------

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load official (`net.` optional) or diffusers keys; any missing / unexpected key is a `ValueError`."""
        own = self.state_dict()
        mapped = checkpoint.to_network_keys(state_dict, own.keys())
        for key, value in mapped.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"state dict: {key!r} is a {type(value).__name__}, not a tensor")
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(f"state dict: {key!r} has shape {tuple(value.shape)}, the network expects "
                                 f"{tuple(own[key].shape)} (is the config right?)")
        self.clear_caches()
        return super().load_state_dict(mapped, strict=True, assign=assign)

    def clear_caches(self) -> None:
        """Drop every cached K/V, modulation and RoPE table (also entries pinned for a captured graph); bumps
        `cache_epoch`, which tells graph owners (`CosmosPolicy`) that their captures read freed memory."""
        for cache in (self.kv_cache, self.modulation_cache, self.rope_cache):
            cache.clear()
        self._zeros.clear()
        self.fp8_weights.clear()
        self.text_versions.clear()
        self.cache_epoch += 1

    def _apply(self, fn, recurse: bool = True):
        # .to(), .cuda(), .half(), ...: the cached tensors belong to the old weights and the old device
        out = super()._apply(fn, recurse)
        if hasattr(self, "kv_cache"):
            self.clear_caches()
        return out

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj[1].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.x_embedder.proj[1].weight.device

    def weights_key(self) -> tuple:
        # In-place updates bump a parameter's version counter; the sum only grows, so it identifies the weights.
        return (self.dtype, self.device, sum(tensor_version(p) for p in self.parameters()))

    def project_context(self, context: torch.Tensor) -> torch.Tensor:
        """The text context through `crossattn_proj` (Predict2.5; Predict2: cast only), marked so `forward` takes
        it as projected: project once per instruction, and the wide embedding need not be kept."""
        return project_context(self.crossattn_proj, context.to(self.device), self.dtype)

    def _caching(self) -> bool:
        """Caches hold plain tensors: while autograd records (training, fine-tuning) everything is recomputed."""
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    # -- forward ----------------------------------------------------------------------------------------------

    def forward(self, x_B_C_T_H_W: torch.Tensor, timesteps_B_T: torch.Tensor, crossattn_emb: torch.Tensor,
                condition_video_input_mask_B_C_T_H_W: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Network output `(B, out_channels, T, H, W)` in the network's dtype (fp32 under the fp32 strategy).

        `x_B_C_T_H_W` (B, in_channels, T, H, W) latents; `timesteps_B_T` (B, T // patch_temporal) per-frame
        times; `crossattn_emb` (B or 1, N, `config.text_channels`); the condition mask broadcasts to
        (B, 1, T, H, W); `padding_mask` (B or 1, 1, H_img, W_img), zeros when None.
        """
        x, timesteps, context, cond = check_dit_inputs(self.config, self.device, self.dtype, x_B_C_T_H_W, timesteps_B_T,
                                                       crossattn_emb, condition_video_input_mask_B_C_T_H_W)
        b, _, t, h, w = x.shape
        parts = [x, cond]
        if self.config.concat_padding_mask:
            parts.append(self._padding_channel(padding_mask, b, t, h, w))
        tokens = self.x_embedder(torch.cat(parts, dim=1))  # (B, T', H', W', D)
        _, tp, hp, wp, d = tokens.shape
        tokens = tokens.reshape(b, tp, hp * wp, d)
        if self.backend == "reference":
            out = self._forward_reference(tokens, timesteps, context, (tp, hp, wp))
        else:
            out = self._forward_fused(tokens, timesteps, context, (tp, hp, wp))
        return unpatchify(out.reshape(b, tp, hp, wp, -1), self.config)

    def _padding_channel(self, padding_mask, b, t, h, w):
        if padding_mask is None:
            return self._zero_channel(b, t, h, w)
        if (not isinstance(padding_mask, torch.Tensor) or padding_mask.dim() != 4 or padding_mask.shape[1] != 1
                or padding_mask.shape[0] not in (1, b)):
            got = tuple(padding_mask.shape) if isinstance(padding_mask, torch.Tensor) else type(padding_mask).__name__
            raise ValueError(f"CosmosDiT: padding_mask must be ({b} or 1, 1, H_img, W_img), got {got}")
        # Nearest-neighbour resize to the latent grid (torchvision's NEAREST on tensors), repeated over T.
        resized = F.interpolate(padding_mask.to(self.device, torch.float32), size=(h, w), mode="nearest")
        return resized.to(self.dtype)[:, :, None].expand(b, 1, t, h, w)

    def _time_embedding(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(emb, adaln_lora): RMS-normed sinusoid `(..., D)` and the shared adaLN-LoRA term `(..., 3D)`."""
        sinusoid = self.t_embedder[0](timesteps.to(self.device))
        return self.t_embedding_norm(sinusoid), self.t_embedder[1](sinusoid)

    def _rope(self, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        return cosmos_kernels.rope_3d_tables(
            *grid, c.head_dim, h_extrapolation_ratio=c.rope_h_extrapolation_ratio,
            w_extrapolation_ratio=c.rope_w_extrapolation_ratio, t_extrapolation_ratio=c.rope_t_extrapolation_ratio,
            ranges_bf16=c.rope_ranges_bf16, device=self.device)

    # -- reference backend ------------------------------------------------------------------------------------

    def _forward_reference(self, x, timesteps, context, grid):
        context = project_text(self.crossattn_proj, context, self.dtype).expand(x.shape[0], -1, -1)
        emb, adaln_lora = self._time_embedding(timesteps)  # (B, T, D), (B, T, 3D)
        rope = self._rope(grid)
        for _, block in nvtx_enumerate(self.blocks, "dit.block"):
            x = block(x, emb, adaln_lora, context, rope)
        return self.final_layer(x, emb, adaln_lora)

    # -- fused backend ------------------------------------------------------------------------------------------

    def _modulation_table(self, emb: torch.Tensor, adaln_lora: torch.Tensor) -> torch.Tensor:
        """Every block's 9 modulation vectors and the final layer's 2, concatenated: `(..., (9 * blocks + 2) D)` in
        the network dtype. Under the fp32 strategy (computed in fp32, rounded once) the final layer's fp32
        (shift, scale) follow, their bits viewed as the network dtype (`_final_fp32_modulation` reads them)."""
        parts = [block.modulation(emb, adaln_lora) for block in self.blocks]
        final = self.final_layer.modulation(emb, adaln_lora)
        table = torch.cat(parts + [final], dim=-1).to(self.dtype)
        if not self.config.use_wan_fp32_strategy:
            return table
        return torch.cat([table, final.float().contiguous().view(self.dtype)], dim=-1)

    def _final_fp32_modulation(self, mods: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fp32 (shift, scale) of the final layer stored after the table (fp32 strategy), as views."""
        width = (9 * self.config.num_blocks + 2) * self.config.model_channels
        return mods[..., width:].view(torch.float32).chunk(2, dim=-1)

    def _modulation(self, timesteps: torch.Tensor, weights_key: tuple) -> torch.Tensor:
        """`(B, T, 1, (9 * blocks + 2) D)` (+ the fp32 final pair, see `_modulation_table`). CPU timesteps: one
        cached tensor per step, keyed by its values, read as it is on a hit (no stack, no launch); equal batch rows
        are stored once, expanded. Device timesteps: computed."""
        b, t = timesteps.shape
        if timesteps.device.type != "cpu" or not self._caching():
            return self._modulation_table(*self._time_embedding(timesteps)).unsqueeze(2)
        rows = timesteps.tolist()
        shared = all(row == rows[0] for row in rows)
        values = tuple(rows[0]) if shared else tuple(v for row in rows for v in row)
        stored_b = 1 if shared else b
        key = (values, stored_b, t, weights_key)
        capturing = _capturing(self.device)
        table = self.modulation_cache.get(key)
        if table is None:
            distinct = list(dict.fromkeys(values))  # first-seen order; one table row per distinct time
            table = self._modulation_table(*self._time_embedding(torch.tensor(distinct, dtype=timesteps.dtype)))
            if len(distinct) < len(values):  # row views stacked once per step: no host-to-device index copy
                position = {v: i for i, v in enumerate(distinct)}
                table = torch.stack([table[position[v]] for v in values])
            table = table.view(stored_b, t, 1, -1)
            if not capturing:  # a capture reads entries but never creates them (its memory is the graph's)
                self.modulation_cache.put(key, table)
        elif capturing:
            self.modulation_cache.pin(key)
        return table if stored_b == b else table.expand(b, -1, -1, -1)

    def _zero_channel(self, b: int, t: int, h: int, w: int) -> torch.Tensor:
        """The padding channel of a call without `padding_mask`: one cached zero, expanded (no per-pass fill)."""
        key = (self.dtype, self.device)
        zero = self._zeros.get(key)
        if zero is None:
            with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
                zero = torch.zeros((1,) * 5, dtype=self.dtype, device=self.device)
            if not _capturing(self.device):  # a capture's allocations belong to its graph
                self._zeros[key] = zero
        return zero.expand(b, 1, t, h, w)

    def _cached_rope(self, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        key = (grid, self.device)
        capturing = _capturing(self.device)
        rope = self.rope_cache.get_or_create(key, lambda: self._rope(grid), store=not capturing and self._caching())
        if capturing:
            self.rope_cache.pin(key)
        return rope

    def _cross_kv(self, context: torch.Tensor, weights_key: tuple) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """Per block: (RMS-normed keys, values) of the caller's text embedding, `(B or 1, N, heads, head_dim)`.

        Keyed by the tensor's identity (held by a weak reference, so a recycled `id` never matches) and its
        version (`text_versions`). Nothing here reads a value back to the host: a pass stays free of syncs.
        """
        if not self._caching():
            return self._compute_cross_kv(context, compact=False)
        key = (id(context), self.text_versions.version(context), tuple(context.shape), tuple(context.stride()),
               context.storage_offset(), context.dtype, context.device, weights_key)
        capturing = _capturing(self.device)
        entry = self.kv_cache.get(key)
        if entry is not None and entry[0]() is context:
            if capturing:
                self.kv_cache.pin(key)
            return entry[1]
        kv = self._compute_cross_kv(context, compact=not capturing)
        if not capturing:
            cache = self.kv_cache
            # Free the entry as soon as the caller's tensor is gone.
            ref = weakref.ref(context, lambda _ref, key=key: cache.pop(key))
            cache.put(key, (ref, kv))
            self.text_versions.remember(context)  # what a later refresh compares an inference tensor with
        return kv

    def _compute_cross_kv(self, context: torch.Tensor, compact: bool) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """Per block (keys, values, last-key repeats). With `compact`, all-zero text rows (the zero padding of T5
        embeddings) become one zero row that stands for all of them (`attention(..., last_key_repeats=n)`,
        exact: a zero row's key is RMSNorm(0) = 0 and its value 0); one host read finds them. A Predict2.5 network
        projects the text first (`crossattn_proj`), here, once per cached instruction; zero rows are then those of
        the projected context (a padding mark no longer applies)."""
        emb = project_text(self.crossattn_proj, context, self.dtype)
        n = emb.shape[1]
        repeats = 1
        tokens = text_tokens(context) if self.crossattn_proj is None else None
        if compact and n > 1 and tokens is not None:
            # Told how many leading rows are non-zero (meta tensors have no values to read).
            keep = max(1, min(tokens, n)) + 1  # the instruction's rows and one zero row
            if keep <= min(129, n // 2):
                emb, repeats = emb[:, :keep], n - keep + 1
        elif compact and n > 1 and emb.device.type != "meta":
            nonzero = emb.ne(0).any(-1).cpu()  # (B, N); once per cached instruction
            keep = int(nonzero.sum(-1).max()) + 1  # every row then ends with at least one zero row
            if keep <= min(129, n // 2):
                # Each row keeps its non-zero positions first (stable), then zero rows up to `keep`.
                order = torch.sort((~nonzero).to(torch.int8), dim=-1, stable=True).indices[:, :keep]
                emb = torch.gather(emb, 1, order.to(emb.device)[..., None].expand(-1, -1, emb.shape[-1]))
                repeats = n - keep + 1
        kv = []
        for block in self.blocks:
            attn = block.cross_attn
            k = cosmos_kernels.rms_norm(attn.heads(attn.k_proj(emb)), attn.k_norm.weight, self.config.eps)
            kv.append((k, attn.heads(attn.v_proj(emb)), repeats))
        return kv

    def _block_params(self, weights_key: tuple) -> list[tuple[torch.Tensor, ...]]:
        """Per block, what the kernels read, prepared once per set of weights: the packed QKV weight and the
        q / k / cross-q norm weights in fp32 (the attention kernels' dtype; no per-call casts)."""
        entry = getattr(self, "_prepared", None)
        if entry is not None and entry[0] == weights_key and all(
                b.self_attn.packed_qkv_weight() is p[0] for b, p in zip(self.blocks, entry[1])):
            return entry[1]
        params = []
        for block in self.blocks:
            sa, ca = block.self_attn, block.cross_attn
            params.append((sa.packed_qkv_weight(), *(w.detach().float() for w in (
                sa.q_norm.weight, sa.k_norm.weight, ca.q_norm.weight))))
        if self._caching() and not _capturing(self.device):
            self._prepared = (weights_key, params)
        return params

    def _forward_fused(self, x, timesteps, context, grid):
        eps, d = self.config.eps, self.config.model_channels
        weights_key = self.weights_key()
        mods = self._modulation(timesteps, weights_key)
        cos, sin = self._cached_rope(grid)
        kv = self._cross_kv(context, weights_key)
        params = self._block_params(weights_key)

        def mod(i: int, j: int) -> torch.Tensor:  # j-th D-vector of block i (block num_blocks = final layer)
            return mods[..., (9 * i + j) * d: (9 * i + j + 1) * d]

        if self.fp8 and self._caching():
            weights = self.fp8_weights.get(self.blocks, weights_key, store=not _capturing(self.device))
            x, normed = fp8_blocks.forward_blocks(self.blocks, weights, x, mod, (cos, sin), kv, params, eps)
        else:
            x, normed = self._fused_blocks(x, mod, (cos, sin), kv, params)
        if self.config.use_wan_fp32_strategy:  # the fp32 final layer normalises the residual stream itself
            return self.final_layer.project(x, *self._final_fp32_modulation(mods))
        return self.final_layer.linear(normed)

    def _fused_blocks(self, x, mod, rope, kv, params):
        eps, d = self.config.eps, self.config.model_channels
        b, t, s, _ = x.shape
        cos, sin = rope
        normed = cosmos_kernels.layer_norm_modulate(x, mod(0, 0), mod(0, 1), eps)
        for i, block in nvtx_enumerate(self.blocks, "dit.block"):
            sa, ca = block.self_attn, block.cross_attn
            qkv_weight, q_norm, k_norm, cross_q_norm = params[i]
            flat = normed.view(b, t * s, d)
            if qkv_weight is not None and self._caching():  # one GEMM; q, k, v are strided views of its output
                q, k, v = F.linear(flat, qkv_weight).unflatten(-1, (3, sa.num_heads, sa.head_dim)).unbind(2)
            else:  # autograd records through the three parameters, or a capture after .to()
                q, k, v = (sa.heads(proj(flat)) for proj in (sa.q_proj, sa.k_proj, sa.v_proj))
            out = cosmos_kernels.attention(q, k, v, q_norm_weight=q_norm, k_norm_weight=k_norm, rope_cos=cos,
                                           rope_sin=sin, norm_eps=eps)
            out = sa.output_proj(out.flatten(2)).view(b, t, s, d)
            x, normed = cosmos_kernels.gated_residual_layer_norm_modulate(x, out, mod(i, 2), mod(i, 3), mod(i, 4), eps)

            ck, cv, repeats = kv[i]
            ck, cv = ck.expand(b, -1, -1, -1), cv.expand(b, -1, -1, -1)
            q = ca.heads(ca.q_proj(normed.view(b, t * s, d)))
            # The keys are cached normalised: only q's RMSNorm, inside the attention launch(es).
            out = cosmos_kernels.attention(q, ck, cv, q_norm_weight=cross_q_norm, norm_eps=eps,
                                           last_key_repeats=repeats)
            out = ca.output_proj(out.flatten(2)).view(b, t, s, d)
            x, normed = cosmos_kernels.gated_residual_layer_norm_modulate(x, out, mod(i, 5), mod(i, 6), mod(i, 7), eps)

            mlp = block.mlp  # the GELU in its GEMM's epilogue where the backend has one
            out = mlp.layer2(cosmos_kernels.linear_gelu(normed, mlp.layer1.weight))
            # The MLP's gated residual is fused with the next sub-layer's norm: the next block's self-attention
            # (shift, scale), or the final layer's (shift, scale), which sit at the same offsets.
            x, normed = cosmos_kernels.gated_residual_layer_norm_modulate(x, out, mod(i, 8), mod(i + 1, 0),
                                                                          mod(i + 1, 1), eps)
        return x, normed
