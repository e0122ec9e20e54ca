"""The layers of the Cosmos-Predict2 DiT, named as in the official checkpoint, with their reference forward.

Module and parameter names follow the official `MiniTrainDIT` so that `state_dict()` keys are the official
ones (without the `net.` prefix). Tokens are `(B, T, S, D)` (S = H*W tokens per latent frame); per-frame
modulation is `(B, T, 1, D)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cosmos_kernels.adaptive_norm import reference as norm_ref
from cosmos_kernels.attention import reference as attention_ref
from cosmos_policy.model.config import DiTConfig


class RMSNorm(nn.Module):
    """RMSNorm with a learnable weight, computed in fp32 and returned in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_ref.rms_norm(x, self.weight, self.eps)


def linear_in(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`layer(x)` computed in x's dtype: the same op as `layer(x)` when the dtypes agree; weights up-cast when
    x is fp32 and the network bf16 (the fp32 islands)."""
    bias = layer.bias.to(x.dtype) if layer.bias is not None else None
    return F.linear(x, layer.weight.to(x.dtype), bias)


def timestep_sinusoid(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """`cat([cos, sin])` of `t * 10000^(-i/half)`, computed in fp32 and cast back to the timesteps' dtype."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    angles = timesteps.float()[..., None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(timesteps.dtype)


class Timesteps(nn.Module):
    """Parameter-free sinusoidal embedding (index 0 of the official `t_embedder`)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timestep_sinusoid(timesteps, self.num_channels)


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear(D -> 3D): the adaLN-LoRA term shared by every block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim, bias=False)
        self.linear_2 = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, sinusoid: torch.Tensor) -> torch.Tensor:
        """In the sinusoid's dtype (fp32 under the fp32 strategy: the weights are up-cast, as autocast does)."""
        return linear_in(F.silu(linear_in(sinusoid, self.linear_1)), self.linear_2)


class Attention(nn.Module):
    """Multi-head attention with per-head QK RMSNorm; `context_dim` set makes it cross-attention."""

    def __init__(self, query_dim: int, context_dim: int, num_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.q_proj = nn.Linear(query_dim, inner, bias=False)
        self.k_proj = nn.Linear(context_dim, inner, bias=False)
        self.v_proj = nn.Linear(context_dim, inner, bias=False)
        self.output_proj = nn.Linear(inner, query_dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)
        self.is_self_attention = query_dim == context_dim
        self.pack_qkv()

    # -- the packed QKV projection of self-attention ------------------------------------------------------------
    # q_proj, k_proj and v_proj keep their own parameters (and the official state_dict keys), but their weights
    # are views of one (3 * inner, D) tensor, so that the fused network runs one GEMM. In-place updates and
    # `load_state_dict` (which copies into the parameters) keep the views; `.to()` and assignments replace them,
    # after which `pack_qkv` (run by `_apply` and, lazily, by `packed_qkv_weight`) packs them again.

    def _qkv(self) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
        mods = self._modules  # plain dict reads: this runs on every fused forward
        return tuple(mods[name]._parameters["weight"] for name in ("q_proj", "k_proj", "v_proj"))

    def pack_qkv(self) -> None:
        """Make q / k / v weights views of one packed tensor (values unchanged); self-attention only."""
        if not self.is_self_attention:
            return
        weights = self._qkv()
        if any(w.requires_grad and torch.is_grad_enabled() and w.grad_fn is not None for w in weights):
            return
        with torch.no_grad():
            packed = torch.cat([w.detach() for w in weights])
        n = weights[0].shape[0]
        for i, w in enumerate(weights):
            w.data = packed[i * n: (i + 1) * n]
        self._packed = packed

    def packed_qkv_weight(self) -> torch.Tensor | None:
        """The `(3 * inner, D)` weight whose rows are exactly q_proj's, k_proj's and v_proj's (None: not packed,
        say inside a CUDA-graph capture after a `.to()`, where nothing may be allocated)."""
        if not self.is_self_attention:
            return None
        packed = getattr(self, "_packed", None)
        if packed is None or not self._is_packed(packed):
            if self.q_proj.weight.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                return None
            self.pack_qkv()
            packed = self._packed
        return packed

    def _is_packed(self, packed: torch.Tensor) -> bool:
        """O(1): each weight is the right slice of `packed`'s storage (works on meta tensors too)."""
        weights = self._qkv()
        n, d = weights[0].shape
        if packed.device.type == "meta":  # no addresses: compare storages and offsets
            storage = packed.untyped_storage()._cdata
            same = [w.untyped_storage()._cdata == storage and w.storage_offset() == i * n * d
                    for i, w in enumerate(weights)]
        else:
            base, size = packed.data_ptr(), packed.element_size()
            same = [w.data_ptr() == base + i * n * d * size for i, w in enumerate(weights)]
        return all(same) and all(w.dtype == packed.dtype and w.shape == (n, d) and w.is_contiguous() for w in weights)

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)
        self.pack_qkv()  # .to() / .cuda() / .half() gave each weight its own new tensor
        return out

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Reference: proj -> RMSNorm(q, k) -> RoPE(q, k) (self-attention only) -> SDPA -> output_proj."""
        context = x if context is None else context
        q = self.q_norm(self.heads(self.q_proj(x)))
        k = self.k_norm(self.heads(self.k_proj(context)))
        v = self.heads(self.v_proj(context))
        if rope is not None:
            q, k = attention_ref.qk_norm_rope(q, k, None, None, *rope)  # rotate-half RoPE only
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.output_proj(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """Linear -> GELU (exact erf) -> Linear, no biases (the official `GPT2FeedForward`)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layer1 = nn.Linear(dim, hidden, bias=False)
        self.layer2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(F.gelu(self.layer1(x)))


class Modulator(nn.Sequential):
    """SiLU -> Linear(D -> lora) -> Linear(lora -> chunks*D), in the input's dtype (see `linear_in`)."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return linear_in(linear_in(F.silu(emb), self[1]), self[2])


def adaln_modulator(dim: int, lora_dim: int, chunks: int) -> Modulator:
    """SiLU -> Linear(D -> lora) -> Linear(lora -> chunks*D); the adaLN-LoRA term is added by the caller."""
    return Modulator(nn.SiLU(), nn.Linear(dim, lora_dim, bias=False), nn.Linear(lora_dim, chunks * dim, bias=False))


def _per_frame(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(2)  # (B, T, D) -> (B, T, 1, D): broadcasts over a frame's tokens


class Block(nn.Module):
    """Self-attention, cross-attention and MLP, each with adaLN (shift, scale, gate) and a gated residual."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        d, c = config.model_channels, config
        self.eps = c.eps
        self.self_attn = Attention(d, d, c.num_heads, c.head_dim, c.eps)
        self.cross_attn = Attention(d, c.crossattn_emb_channels, c.num_heads, c.head_dim, c.eps)
        self.mlp = FeedForward(d, c.mlp_hidden)
        self.adaln_modulation_self_attn = adaln_modulator(d, c.adaln_lora_dim, 3)
        self.adaln_modulation_cross_attn = adaln_modulator(d, c.adaln_lora_dim, 3)
        self.adaln_modulation_mlp = adaln_modulator(d, c.adaln_lora_dim, 3)

    def modulation(self, emb: torch.Tensor, adaln_lora: torch.Tensor) -> torch.Tensor:
        """`(..., 9D)`: [shift, scale, gate] of self-attention, cross-attention, MLP, in that order."""
        return torch.cat([
            self.adaln_modulation_self_attn(emb) + adaln_lora,
            self.adaln_modulation_cross_attn(emb) + adaln_lora,
            self.adaln_modulation_mlp(emb) + adaln_lora,
        ], dim=-1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, adaln_lora: torch.Tensor, context: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Reference forward on tokens `(B, T, S, D)` with per-frame `emb (B, T, D)`, `adaln_lora (B, T, 3D)`."""
        b, t, s, d = x.shape
        # fp32 under the fp32 strategy, then rounded to x's dtype (the official `.type_as(x)`)
        mods = [_per_frame(m) for m in self.modulation(emb, adaln_lora).to(x.dtype).chunk(9, dim=-1)]
        shift_s, scale_s, gate_s, shift_c, scale_c, gate_c, shift_m, scale_m, gate_m = mods

        def flat(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t * s, d)

        def norm(y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return norm_ref.layer_norm_modulate(y, shift, scale, self.eps)

        x = x + gate_s * self.self_attn(flat(norm(x, shift_s, scale_s)), rope=rope).view(b, t, s, d)
        x = x + gate_c * self.cross_attn(flat(norm(x, shift_c, scale_c)), context).view(b, t, s, d)
        x = x + gate_m * self.mlp(norm(x, shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """adaLN (shift first, then scale) and the linear projection to `patch_volume * out_channels`."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        d = config.model_channels
        self.eps = config.eps
        self.fp32 = config.use_wan_fp32_strategy
        self.linear = nn.Linear(d, config.patch_volume * config.out_channels, bias=False)
        self.adaln_modulation = adaln_modulator(d, config.adaln_lora_dim, 2)

    def modulation(self, emb: torch.Tensor, adaln_lora: torch.Tensor) -> torch.Tensor:
        """`(..., 2D)`: [shift, scale]."""
        return self.adaln_modulation(emb) + adaln_lora[..., : 2 * emb.shape[-1]]

    def forward(self, x: torch.Tensor, emb: torch.Tensor, adaln_lora: torch.Tensor) -> torch.Tensor:
        shift, scale = (_per_frame(m) for m in self.modulation(emb, adaln_lora).chunk(2, dim=-1))
        return self.project(x, shift, scale)

    def project(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """LayerNorm, modulation, linear; all in fp32 (fp32 output) under the fp32 strategy."""
        if self.fp32:
            x, shift, scale = x.float(), shift.float(), scale.float()
            return linear_in(norm_ref.layer_norm_modulate(x, shift, scale, self.eps), self.linear)
        return self.linear(norm_ref.layer_norm_modulate(x, shift, scale, self.eps))


class PatchEmbed(nn.Module):
    """`b c (t r) (h m) (w n) -> b t h w (c r m n)` (channel-major features), then Linear without bias."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.pt, self.ps = config.patch_temporal, config.patch_spatial
        # Index 1 keeps the official key `x_embedder.proj.1.weight` (index 0 is the rearrange).
        self.proj = nn.Sequential(nn.Identity(), nn.Linear(config.patch_in_channels * config.patch_volume,
                                                           config.model_channels, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        pt, ps = self.pt, self.ps
        x = x.reshape(b, c, t // pt, pt, h // ps, ps, w // ps, ps).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return self.proj(x.reshape(b, t // pt, h // ps, w // ps, c * pt * ps * ps))


def unpatchify(x: torch.Tensor, config: DiTConfig) -> torch.Tensor:
    """`B T H W (p1 p2 t C) -> B C (T t) (H p1) (W p2)`: C innermost, not the inverse of the patch embedding."""
    b, t, h, w, _ = x.shape
    ps, pt, c = config.patch_spatial, config.patch_temporal, config.out_channels
    x = x.reshape(b, t, h, w, ps, ps, pt, c).permute(0, 7, 1, 6, 2, 4, 3, 5)
    return x.reshape(b, c, t * pt, h * ps, w * ps)
