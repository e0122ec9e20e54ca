"""Opt-in FP8 (e4m3) token GEMMs of the fused DiT blocks (`CosmosDiT(..., fp8=True)`).

Six GEMMs per block run in FP8 with per-output-channel weight scales: the packed QKV projection, the self-attention
output, the cross-attention query and output, and both MLP layers. Their weights are quantized once per set of
weights (`WeightCache`, keyed like every other weight-dependent cache: the parameters' version counters, so
`load_state_dict`, `.to()` and in-place updates re-quantize; the bf16 parameters stay the only bf16 copy). Their
activations arrive quantized by the kernels that produce them, or are quantized by the GEMM that reads them:
- the adaptive norms' FP8 variants write the normed rows as e4m3 values and a scale per row;
- the QKV projection is `fp8_linear_qk_norm_rope`: its epilogue applies the self-attention's per-head q / k RMSNorm
  and RoPE, so q and k leave the GEMM ready for attention; the cross-attention query is `fp8_linear_head_norm`, the
  same kernel with one section of heads, each normed with the cross-attention's q norm;
- the MLP's first layer is `fp8_linear_gelu_quantize`: the GELU and the quantization (a scale per row and 128
  columns: a row spans many output tiles) run in its epilogue, so the hidden activation is written once, in e4m3;
- the three output projections (self-attention, cross-attention, MLP second layer) are `fp8_linear_gated_residual`:
  their epilogue adds the gated residual, so their product never reaches memory for a norm to re-read;
- the attentions write their output as e4m3 with a scale per (token, head) (`attention_fp8`) where a head is one
  of the output projection's 128-column scale groups (head_dim 128, the 2B); with other head dims the output
  projection quantizes the 16-bit attention output itself, a scale per row.
Cross-attention K/V, the modulation, the time embedding and the final layer stay in the network's dtype. Nothing
reads a value back to the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

import cosmos_kernels
from cosmos_kernels.adaptive_norm import layer_norm_modulate_fp8
from cosmos_kernels.attention import attention_fp8, fp8_linear_head_norm, fp8_linear_qk_norm_rope
from cosmos_kernels.fp8 import fp8_linear_gated_residual, fp8_linear_gelu_quantize, quantize_weight
from cosmos_kernels.fp8.residual import GROUP

Quantized = tuple[torch.Tensor, torch.Tensor]  # e4m3 values, fp32 scales (one per row / output channel)


class BlockWeights(NamedTuple):
    """A block's six token-GEMM weights, each as (e4m3 values `(N, K)`, fp32 scales `(N, 1)`)."""

    qkv: Quantized
    self_out: Quantized
    cross_q: Quantized
    cross_out: Quantized
    mlp_in: Quantized
    mlp_out: Quantized


def quantize_block(block: nn.Module) -> BlockWeights:
    """Quantize a block's token-GEMM weights (the packed QKV weight is a view of q/k/v's: no bf16 copy is made)."""
    sa, ca, mlp = block.self_attn, block.cross_attn, block.mlp
    qkv = sa.packed_qkv_weight()
    if qkv is None:  # not packed (inside a capture after .to()): the three weights, concatenated once here
        qkv = torch.cat([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight])
    return BlockWeights(*(quantize_weight(w.detach()) for w in (
        qkv, sa.output_proj.weight, ca.q_proj.weight, ca.output_proj.weight, mlp.layer1.weight, mlp.layer2.weight)))


class WeightCache:
    """The quantized weights of every block, for one set of weights (a key such as `CosmosDiT.weights_key()`)."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.blocks: list[BlockWeights] = []

    def get(self, blocks: nn.ModuleList, key: tuple, store: bool = True) -> list[BlockWeights]:
        """The blocks' quantized weights for `key`, quantized now if `key` is new (kept unless `store` is False:
        inside a CUDA-graph capture, whose allocations belong to the graph)."""
        if self.key == key and len(self.blocks) == len(blocks):
            return self.blocks
        with torch.no_grad():
            weights = [quantize_block(block) for block in blocks]
        if store:
            self.key, self.blocks = key, weights
        return weights

    def clear(self) -> None:
        self.key, self.blocks = None, []

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for w in self.blocks for pair in w for t in pair)


def _attention_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> tuple:
    """The attention output `(B, L, heads, head_dim)` as the output projection's A `(B, L, heads * head_dim)`: e4m3
    with a scale per (token, head), which is one per row and group of 128 columns, where head_dim is that group;
    else in the network's dtype with no scales (quantized row-wise inside the GEMM)."""
    if q.shape[-1] == GROUP:
        values, scales = attention_fp8(q, k, v, **kwargs)
        return values.flatten(2), scales.flatten(2)
    return cosmos_kernels.attention(q, k, v, **kwargs).flatten(2), None


def forward_blocks(
    blocks: nn.ModuleList,
    weights: list[BlockWeights],
    x: torch.Tensor,
    mod: Callable[[int, int], torch.Tensor],
    rope: tuple[torch.Tensor, torch.Tensor],
    kv: list[tuple[torch.Tensor, torch.Tensor, int]],
    norm_weights: list[tuple[torch.Tensor, ...]],
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused network's blocks with FP8 token GEMMs, on tokens `x (B, T, S, D)`; returns the residual stream after
    the last block and the final layer's input (that stream normed and modulated by the final layer's shift and scale),
    both in x's dtype.

    `mod(i, j)` is the j-th modulation vector of block i (block `len(blocks)`: the final layer); `kv` holds each block's
    cached cross-attention keys, values and last-key repeats; `norm_weights[i]` its (packed QKV weight, q norm, k norm,
    cross q norm) as the fused network prepares them (the packed weight is not read here)."""
    b, t, s, d = x.shape
    dtype = x.dtype
    cos, sin = rope
    rows = layer_norm_modulate_fp8(x, mod(0, 0), mod(0, 1), eps)
    normed = x
    for i, block in enumerate(blocks):
        sa, ca, w = block.self_attn, block.cross_attn, weights[i]
        _, q_norm, k_norm, cross_q_norm = norm_weights[i]
        flat = (rows[0].view(b, t * s, d), rows[1].view(b, t * s, 1))
        q, k, v = fp8_linear_qk_norm_rope(*flat, *w.qkv, q_norm, k_norm, cos, sin, eps=eps, num_heads=sa.num_heads,
                                          out_dtype=dtype)  # q and k normed and rotated in the GEMM
        out = _attention_rows(q, k, v)  # e4m3 per (token, head) at head_dim 128, else quantized in the GEMM
        x = fp8_linear_gated_residual(*out, *w.self_out, x, mod(i, 2))
        rows = layer_norm_modulate_fp8(x, mod(i, 3), mod(i, 4), eps)

        ck, cv, repeats = kv[i]
        flat = (rows[0].view(b, t * s, d), rows[1].view(b, t * s, 1))
        q = fp8_linear_head_norm(*flat, *w.cross_q, cross_q_norm, num_heads=ca.num_heads, eps=eps,
                                 out_dtype=dtype)  # every head normed in the GEMM
        out = _attention_rows(q, ck.expand(b, -1, -1, -1), cv.expand(b, -1, -1, -1), last_key_repeats=repeats)
        x = fp8_linear_gated_residual(*out, *w.cross_out, x, mod(i, 5))
        rows = layer_norm_modulate_fp8(x, mod(i, 6), mod(i, 7), eps)

        hidden = fp8_linear_gelu_quantize(*rows, *w.mlp_in)  # e4m3 with a scale per row and 128 columns
        x = fp8_linear_gated_residual(*hidden, *w.mlp_out, x, mod(i, 8))
        if i + 1 < len(blocks):  # the next block's QKV input, quantized by the norm that produces it
            rows = layer_norm_modulate_fp8(x, mod(i + 1, 0), mod(i + 1, 1), eps)
        else:  # the final layer's input stays in the network's dtype
            normed = cosmos_kernels.layer_norm_modulate(x, mod(i + 1, 0), mod(i + 1, 1), eps)
    return x, normed
