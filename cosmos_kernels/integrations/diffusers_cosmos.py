"""`CosmosTransformer3DModel` (Cosmos-Predict2 / 2.5) on cosmos_kernels.

What diffusers computes, and the op that computes the same:
- `CosmosAdaLayerNormZero` (norm1/2/3 of every block): `LayerNorm(x, eps) * (1 + scale) + shift` with
  `(shift, scale, gate)` from the adaLN-LoRA MLP, per sample `(B, 1, D)` or per token `(B, L, D)` (per-frame
  timesteps `(B, 1, T, 1, 1)` reach the blocks expanded to every token) -> `layer_norm_modulate`, and the block's
  `residual + gate * out` followed by the next norm -> `gated_residual_layer_norm_modulate`.
- `CosmosAdaLayerNorm` (norm_out) -> `layer_norm_modulate`.
- `CosmosAttnProcessor2_0` / `2_5`: per-head `RMSNorm` of q and k with weight, rotate-half RoPE from
  `(L, head_dim)` cos / sin tables, SDPA -> `attention(q, k, v, q_norm_weight=, k_norm_weight=, rope_cos=,
  rope_sin=)`, one call per attention (2.5's image-context attention is a second call).
A call with an `attention_mask` runs diffusers' processor: the attention op takes no key mask.
"""

from __future__ import annotations

import torch
from diffusers.models import normalization
from diffusers.models.transformers import transformer_cosmos as tc

import cosmos_kernels as ck
from cosmos_kernels.integrations import patching as integ


def _modulation(norm: torch.nn.Module, embedded_timestep: torch.Tensor, temb: torch.Tensor | None, n: int):
    """The `n` modulation tensors exactly as `CosmosAdaLayerNorm(Zero)` computes them, as views of one tensor."""
    emb = norm.linear_2(norm.linear_1(norm.activation(embedded_timestep)))
    if temb is not None:
        emb = emb + (temb if n == 3 else temb[..., : 2 * norm.embedding_dim])
    parts = emb.chunk(n, dim=-1)
    return tuple(p.unsqueeze(1) for p in parts) if emb.ndim == 2 else parts


class FusedCosmosTransformerBlock(tc.CosmosTransformerBlock):
    """The block with its three adaptive norms and two of its gated residuals fused (5 ops instead of ~20)."""

    _ck_backend: str | None = None

    def forward(self, hidden_states, encoder_hidden_states, embedded_timestep, temb=None, image_rotary_emb=None,
                extra_pos_emb=None, attention_mask=None, controlnet_residual=None, latents=None, block_idx=None):
        if embedded_timestep.dtype != hidden_states.dtype:  # the ops take one dtype: mixed precision runs as is
            return super().forward(hidden_states, encoder_hidden_states, embedded_timestep, temb, image_rotary_emb,
                                   extra_pos_emb, attention_mask, controlnet_residual, latents, block_idx)
        be = self._ck_backend
        if self.before_proj is not None:
            hidden_states = self.before_proj(hidden_states) + latents
        if extra_pos_emb is not None:
            hidden_states = hidden_states + extra_pos_emb

        shift, scale, gate1 = _modulation(self.norm1, embedded_timestep, temb, 3)
        normed = integ.layer_norm_modulate(hidden_states, shift, scale, self.norm1.norm.eps, be)
        attn_output = self.attn1(normed, image_rotary_emb=image_rotary_emb)

        shift, scale, gate2 = _modulation(self.norm2, embedded_timestep, temb, 3)
        hidden_states, normed = integ.gated_residual_layer_norm_modulate(
            hidden_states, attn_output, gate1, shift, scale, self.norm2.norm.eps, be)
        attn_output = self.attn2(normed, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask)

        shift, scale, gate3 = _modulation(self.norm3, embedded_timestep, temb, 3)
        hidden_states, normed = integ.gated_residual_layer_norm_modulate(
            hidden_states, attn_output, gate2, shift, scale, self.norm3.norm.eps, be)
        hidden_states = hidden_states + gate3 * self.ff(normed)

        if controlnet_residual is not None:
            hidden_states = hidden_states + controlnet_residual
        if self.after_proj is not None:
            return hidden_states, self.after_proj(hidden_states)
        return hidden_states


class FusedCosmosAdaLayerNorm(tc.CosmosAdaLayerNorm):
    """norm_out: LayerNorm + modulation in one op."""

    _ck_backend: str | None = None

    def forward(self, hidden_states, embedded_timestep, temb=None):
        shift, scale = _modulation(self, embedded_timestep, temb, 2)
        if shift.dtype != hidden_states.dtype:
            return super().forward(hidden_states, embedded_timestep, temb)
        return integ.layer_norm_modulate(hidden_states, shift, scale, self.norm.eps, self._ck_backend)


class CosmosKernelsAttnProcessor:
    """`CosmosAttnProcessor2_0` and `2_5` on the attention op (q / k RMSNorm and RoPE inside the op)."""

    def __init__(self, original: object, attention_backend: str | None) -> None:
        self.original = original
        self.attention_backend = attention_backend

    def _attend(self, q, k, v, heads: int, q_norm, k_norm, rope):
        q, k, v = (t.unflatten(2, (heads, -1)) for t in (q, k, v))
        cos, sin = rope if rope is not None else (None, None)
        out = ck.attention(q, k, v, q_norm_weight=q_norm.weight, k_norm_weight=k_norm.weight, rope_cos=cos,
                           rope_sin=sin, norm_eps=q_norm.eps, backend=self.attention_backend)
        return out.flatten(2, 3)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:  # a key mask: diffusers' own path (the op has no mask)
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        img_context = None
        if isinstance(encoder_hidden_states, tuple):  # 2.5: (text, image context)
            encoder_hidden_states, img_context = encoder_hidden_states
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        out = self._attend(attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), attn.heads,
                           attn.norm_q, attn.norm_k, image_rotary_emb)
        if img_context is not None:
            out = out + self._attend(attn.q_img(hidden_states), attn.k_img(img_context), attn.v_img(img_context),
                                     attn.heads, attn.q_img_norm, attn.k_img_norm, None)
        return attn.to_out[1](attn.to_out[0](out))


def _why_not_rms(norm: object, name: str) -> str | None:
    if type(norm) is not normalization.RMSNorm:
        return f"{name} is {type(norm).__name__}, not diffusers' RMSNorm"
    if norm.weight is None or norm.bias is not None:
        return f"{name} has {'no weight' if norm.weight is None else 'a bias'}; the op's RMSNorm has a weight only"
    return None


def _why_not_attention(attn: torch.nn.Module) -> str | None:
    """None when the processor and its modules are the ones the op reproduces; else the reason."""
    expected = tc.CosmosAttnProcessor2_5 if isinstance(attn, tc.CosmosAttention) else tc.CosmosAttnProcessor2_0
    if type(attn.processor) is not expected:
        return f"processor {type(attn.processor).__name__} is not diffusers' {expected.__name__}"
    norms = [("norm_q", attn.norm_q), ("norm_k", attn.norm_k)]
    if isinstance(attn, tc.CosmosAttention):
        norms += [("q_img_norm", attn.q_img_norm), ("k_img_norm", attn.k_img_norm)]
    for name, norm in norms:
        why = _why_not_rms(norm, name)
        if why:
            return why
    if attn.norm_q.eps != attn.norm_k.eps:
        return f"norm_q.eps {attn.norm_q.eps} != norm_k.eps {attn.norm_k.eps}; the op takes one eps"
    if len({attn.to_q.out_features, attn.to_k.out_features, attn.to_v.out_features}) != 1:
        return "q, k and v differ in size (grouped heads)"
    return None


def _why_not_adanorm(norm: torch.nn.Module, cls: type) -> str | None:
    if type(norm) is not cls:
        return f"{type(norm).__name__} is not diffusers' {cls.__name__}"
    ln = norm.norm
    if type(ln) is not torch.nn.LayerNorm or ln.weight is not None or len(ln.normalized_shape) != 1:
        return "its LayerNorm is affine or not over the last dim"
    return None


def plan(model: torch.nn.Module, options: integ.KernelOptions) -> tuple[list[integ.Swap], integ.PatchSummary]:
    cfg = model.config
    name = type(model).__name__
    summary = integ.PatchSummary(name)
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    if options.adaptive_norm:
        integ.check_hidden(name, hidden)
    if options.attention:
        integ.check_head_dim(name, cfg.attention_head_dim)
    swaps: list[integ.Swap] = []
    block_cls = integ.with_backend(FusedCosmosTransformerBlock, options.backend)
    for i, block in enumerate(model.transformer_blocks):
        qual = f"transformer_blocks.{i}"
        if options.adaptive_norm:
            why = None if type(block) is tc.CosmosTransformerBlock else f"{type(block).__name__} is a subclass"
            for norm_name in ("norm1", "norm2", "norm3"):
                why = why or _why_not_adanorm(getattr(block, norm_name), tc.CosmosAdaLayerNormZero)
            if why:
                summary.left_alone[f"{qual} adaptive norm"] = why
            else:
                swaps.append(integ.Swap("class", block, block_cls))
                summary.add("adaptive norm + gated residual (norm1/2/3)", qual)
        if options.attention:
            for attn_name in ("attn1", "attn2"):
                attn = getattr(block, attn_name)
                why = _why_not_attention(attn)
                if why:
                    summary.left_alone[f"{qual}.{attn_name}"] = why
                    continue
                swaps.append(integ.Swap("processor", attn, CosmosKernelsAttnProcessor(attn.processor,
                                                                                     options.attention_backend)))
                part = ("self-attention: QK RMSNorm + RoPE + attention" if attn_name == "attn1" else
                        "cross-attention: QK RMSNorm + attention" + (" (text + image context)"
                                                                     if isinstance(attn, tc.CosmosAttention) else ""))
                summary.add(part, f"{qual}.{attn_name}")
    if options.adaptive_norm:
        why = _why_not_adanorm(model.norm_out, tc.CosmosAdaLayerNorm)
        if why:
            summary.left_alone["norm_out"] = why
        else:
            norm_cls = integ.with_backend(FusedCosmosAdaLayerNorm, options.backend)
            swaps.append(integ.Swap("class", model.norm_out, norm_cls))
            summary.add("final adaptive norm", "norm_out")
    else:
        summary.left_alone["adaptive norms"] = "adaptive_norm=False"
    if options.attention:
        summary.left_alone["attention with an attention_mask"] = (
            "runs diffusers' processor (the attention op takes no key mask); the pipelines pass none")
    else:
        summary.left_alone["attention"] = "attention=False"
    summary.left_alone["embeddings, projections, feed-forward"] = "plain matmuls and activations: nothing to fuse"
    return swaps, summary
