"""`WanTransformer3DModel` (Wan 2.1 / 2.2) on cosmos_kernels.

What diffusers computes, and the op that computes the same:
- norm1 / norm3 (`FP32LayerNorm`, no affine) with the block's modulation, in fp32 and rounded once to the
  activations' dtype: `layer_norm_modulate` on the fp32 view of the activations, with the fp32 modulation
  per sample `(B, 1, D)` (Wan 2.1, 2.2 14B) or per token `(B, L, D)` (Wan 2.2 TI2V: timesteps `(B, L)`).
- `hidden + gate * attn` followed by norm2 (`FP32LayerNorm` with weight w and bias b, `cross_attn_norm=True`):
  `gated_residual_layer_norm_modulate` with `shift = b`, `scale = w - 1`; `hidden + attn2` followed by norm3 and
  its modulation: the same op with a unit gate.
- `norm_q` / `norm_k` (`torch.nn.RMSNorm` over all heads, before the head split): `rms_norm`.
- Wan's RoPE rotates interleaved pairs `(x[2i], x[2i+1])`; the op rotates `(x[i], x[i + d/2])`. One
  permutation of the head dim, `[0, 2, 4, ..., 1, 3, 5, ...]`, applied to q and to k maps the first onto the
  second with tables `cos[i] = cos[i + d/2] = cos_i`, and leaves every score `q . k` (and so the attention
  output, v is not permuted) unchanged: q and k are permuted once (a copy each), then `attention` with the
  half-layout tables. The I2V image cross-attention is a second `attention` call.
The final norm's modulation is written in the model's `forward`, not in a module: it runs as diffusers has it.
"""

from __future__ import annotations

import torch
from diffusers.models import normalization
from diffusers.models.transformers import transformer_wan as tw

import cosmos_kernels as ck
from cosmos_kernels.integrations import patching as integ


def interleaved_to_half(x: torch.Tensor) -> torch.Tensor:
    """`(..., d)` with pairs at `(2i, 2i+1)` -> pairs at `(i, i + d/2)` (a contiguous copy)."""
    return x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)


def half_tables(freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan's `(1, L, 1, d)` repeat-interleaved tables -> the op's `(L, d)` rotate-half tables, fp32."""
    length, d = freqs_cos.shape[1], freqs_cos.shape[-1]
    cos = freqs_cos.reshape(length, d)[:, 0::2].float()  # Wan reads cos at even and sin at odd positions
    sin = freqs_sin.reshape(length, d)[:, 1::2].float()
    return torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)


class WanKernelsAttnProcessor:
    """`WanAttnProcessor` on the ops: `rms_norm` over all heads, the head-dim permutation, `attention`."""

    def __init__(self, original: object, backend: str | None, attention_backend: str | None) -> None:
        self.original = original
        self.backend = backend
        self.attention_backend = attention_backend

    def _norm(self, norm: torch.nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(x.dtype).eps if norm.eps is None else norm.eps  # torch.nn.RMSNorm's default
        return ck.rms_norm(x, norm.weight, eps, backend=self.backend)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if attention_mask is not None:  # a key mask: diffusers' own path (the op has no mask)
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        img_context = None
        if attn.add_k_proj is not None:  # I2V: image tokens first, then the 512 text tokens (as diffusers splits)
            n_img = encoder_hidden_states.shape[1] - 512
            img_context = encoder_hidden_states[:, :n_img]
            encoder_hidden_states = encoder_hidden_states[:, n_img:]
        query, key, value = tw._get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        heads = attn.heads
        query = self._norm(attn.norm_q, query).unflatten(2, (heads, -1))
        key = self._norm(attn.norm_k, key).unflatten(2, (heads, -1))
        value = value.unflatten(2, (heads, -1))

        out_img = None
        if img_context is not None:
            key_img, value_img = tw._get_added_kv_projections(attn, img_context)
            key_img = self._norm(attn.norm_added_k, key_img).unflatten(2, (heads, -1))
            out_img = ck.attention(query, key_img, value_img.unflatten(2, (heads, -1)),
                                   backend=self.attention_backend).flatten(2, 3)
        cos = sin = None
        if rotary_emb is not None:
            query, key = interleaved_to_half(query), interleaved_to_half(key)
            cos, sin = half_tables(*rotary_emb)
        out = ck.attention(query, key, value, rope_cos=cos, rope_sin=sin,
                           backend=self.attention_backend).flatten(2, 3)
        if out_img is not None:
            out = out + out_img
        return attn.to_out[1](attn.to_out[0](out))


class FusedWanTransformerBlock(tw.WanTransformerBlock):
    """The block's three norms with their modulation and the two residuals before them, on 3 fused ops."""

    _ck_backend: str | None = None

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb):
        be = self._ck_backend
        if temb.ndim == 4:  # (B, L, 6, D): per-token modulation (Wan 2.2 TI2V)
            mods = [m.squeeze(2) for m in (self.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)]
        else:  # (B, 6, D): per sample
            mods = (self.scale_shift_table + temb.float()).chunk(6, dim=1)
        shift, scale, gate, c_shift, c_scale, c_gate = mods
        dtype = hidden_states.dtype

        # diffusers normalises and modulates the fp32 copy of the activations, then rounds once
        normed = integ.layer_norm_modulate(hidden_states.float(), shift, scale, self.norm1.eps, be).to(dtype)
        attn_output = self.attn1(normed, None, None, rotary_emb)
        if isinstance(self.norm2, torch.nn.Identity):
            hidden_states = (hidden_states.float() + attn_output * gate).type_as(hidden_states)
            normed = hidden_states
        else:  # LN(r) * w + b == LN(r) * (1 + (w - 1)) + b
            residual, normed = integ.gated_residual_layer_norm_modulate(
                hidden_states.float(), attn_output.float(), gate, self.norm2.bias.float(),
                self.norm2.weight.float() - 1, self.norm2.eps, be)
            hidden_states, normed = residual.to(dtype), normed.to(dtype)

        attn_output = self.attn2(normed, encoder_hidden_states, None, None)
        one = c_shift.new_ones(c_shift.shape[-1])  # hidden + attn2 has no gate
        residual, normed = integ.gated_residual_layer_norm_modulate(
            hidden_states.float(), attn_output.float(), one, c_shift, c_scale, self.norm3.eps, be)
        hidden_states, normed = residual.to(dtype), normed.to(dtype)
        ff_output = self.ffn(normed)
        return (hidden_states.float() + ff_output.float() * c_gate).type_as(hidden_states)


def _why_not_block(block: torch.nn.Module) -> str | None:
    if type(block) is not tw.WanTransformerBlock:
        return f"{type(block).__name__} is not diffusers' WanTransformerBlock"
    for name in ("norm1", "norm3"):
        norm = getattr(block, name)
        if type(norm) is not normalization.FP32LayerNorm or norm.weight is not None or norm.bias is not None:
            return f"{name} is not an FP32LayerNorm without affine"
    norm2 = block.norm2
    if not isinstance(norm2, torch.nn.Identity) and (
            type(norm2) is not normalization.FP32LayerNorm or norm2.weight is None or norm2.bias is None):
        return "norm2 is neither Identity nor an FP32LayerNorm with weight and bias"
    return None


def _why_not_attention(attn: torch.nn.Module) -> str | None:
    if type(attn.processor) is not tw.WanAttnProcessor:
        return f"processor {type(attn.processor).__name__} is not diffusers' WanAttnProcessor"
    norms = [("norm_q", attn.norm_q), ("norm_k", attn.norm_k)]
    if attn.add_k_proj is not None:
        norms.append(("norm_added_k", attn.norm_added_k))
    for name, norm in norms:
        if type(norm) is not torch.nn.RMSNorm or norm.weight is None:
            return f"{name} is not a torch.nn.RMSNorm with weight"
    if attn.kv_inner_dim != attn.inner_dim:
        return "q and k / v differ in size"
    return None


def plan(model: torch.nn.Module, options: integ.KernelOptions) -> tuple[list[integ.Swap], integ.PatchSummary]:
    cfg = model.config
    name = type(model).__name__
    summary = integ.PatchSummary(name)
    if options.adaptive_norm:
        integ.check_hidden(name, cfg.num_attention_heads * cfg.attention_head_dim)
    if options.attention:
        integ.check_head_dim(name, cfg.attention_head_dim)
    swaps: list[integ.Swap] = []
    block_cls = integ.with_backend(FusedWanTransformerBlock, options.backend)
    for i, block in enumerate(model.blocks):
        qual = f"blocks.{i}"
        if options.adaptive_norm:
            why = _why_not_block(block)
            if why:
                summary.left_alone[f"{qual} adaptive norm"] = why
            else:
                swaps.append(integ.Swap("class", block, block_cls))
                summary.add("adaptive norm + residual (norm1/2/3)", qual)
        if options.attention:
            for attn_name in ("attn1", "attn2"):
                attn = getattr(block, attn_name)
                if getattr(attn.processor, "_parallel_config", None) is not None:
                    raise ValueError(f"apply_cosmos_kernels: {qual}.{attn_name} runs context-parallel attention "
                                     "(the processor's _parallel_config is set), which the attention op does not "
                                     "cover: pass attention=False or disable the parallelism")
                why = _why_not_attention(attn)
                if why:
                    summary.left_alone[f"{qual}.{attn_name}"] = why
                    continue
                swaps.append(integ.Swap("processor", attn, WanKernelsAttnProcessor(
                    attn.processor, options.backend, options.attention_backend)))
                part = ("self-attention: QK RMSNorm (across heads) + RoPE (interleaved, permuted) + attention"
                        if attn_name == "attn1" else "cross-attention: QK RMSNorm (across heads) + attention"
                        + (" (text + image)" if attn.add_k_proj is not None else ""))
                summary.add(part, f"{qual}.{attn_name}")
    summary.left_alone["norm_out"] = ("its modulation is written in WanTransformer3DModel.forward, not in a "
                                      "module: it runs as diffusers has it")
    if not options.adaptive_norm:
        summary.left_alone["adaptive norms"] = "adaptive_norm=False"
    if not options.attention:
        summary.left_alone["attention"] = "attention=False"
    summary.left_alone["condition embedder, projections, feed-forward"] = ("plain matmuls, activations and the "
                                                                           "image embedder's affine LayerNorms")
    return swaps, summary
