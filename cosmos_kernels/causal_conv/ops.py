"""The causal 3-D convolution of the Wan VAE, on oneDNN wherever PyTorch's CPU heuristic would not pick it.

Why PyTorch runs some of the VAE's convolutions on `aten::slow_conv3d_forward` (an im2col + GEMM loop per sample,
written for correctness, with a large `fill_` / `copy_` of the unfolded input per call): on the CPU, float32
`torch.nn.functional.conv3d` goes to oneDNN (`mkldnn_convolution`) only if `ConvParams::use_mkldnn`
(aten/src/ATen/native/Convolution.cpp) says so, and for a non-grouped, non-transposed convolution that takes one of
- a kernel wider than 3 in both of its last two dims (`weight.size(-1) > 3 && weight.size(-2) > 3`),
- a batch larger than one (`input.size(0) > 1`),
- `input.size(0) * input.size(1) * input.size(2) * input.size(3) > 20480`, a size test written for 4-D inputs:
  on a 5-D input it multiplies N * C * T * H and leaves out W.
The VAE's kernels are 3x3x3, 3x1x1 (the time-downsampling conv) and 1x1x1 (the shortcuts), and the policy encodes
one sample at a time, so only the size test can pick oneDNN, and a causal chunk is short in time (1 + 2 padded
frames for the first, 4 + 2 for the next). With the 96-wide VAE on 64 x 64 frames, 54 of one prefix encode's 3-D
convolutions fail it, among them every conv of the last stage on the first chunk (1, 384, 3, 10, 10): 11,520,
the first chunk's full-size convs (1, 96, 3, 66, 66): 19,008, `conv_in` with its 3 input channels, the
stage-changing convs (1, 96, 6, 34, 34): 19,584, the shortcuts and the time-downsampling convs. Each falls to the
slow path; for the 3x3x3 kernels that is 1.5x to 3x slower than oneDNN on the same input (2 threads, one
shape at a time), while for the 3x1x1 and 1x1x1 kernels, a plain GEMM there, it is as fast or
faster. Channels-last inputs and the explicit causal `F.pad` do not change the choice (the test reads sizes only).

The fix: call `aten::mkldnn_convolution` directly for float32 CPU tensors and kernels wider than 1 in H or W (the
operator the heuristic picks for larger inputs; its sums differ from the slow path's only in fp32 rounding), and pass
the symmetric spatial padding to the convolution instead of writing a padded copy (only the causal time padding is
written). Other devices, dtypes and kernels, inputs that need gradients, and code that `torch.compile` traces
(Dynamo cannot trace the direct call; the compiled graph gets its own convolution) call `F.conv3d`.

Layout: oneDNN reorders a contiguous (N, C, D, H, W) input and weight into its own blocked layout on every call, and
the output back; with a channels-last-3d weight it runs channels-last throughout (input converted once, output
channels-last, so the next conv's input already is), about 1.3x faster on the VAE's 3x3x3 convs (one thread, 96 to
384 channels). `conv3d` takes that path when it is handed a channels-last-3d weight: `channels_last_weight` makes
one, for callers that keep it beside their parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _onednn_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():  # Dynamo cannot trace the direct call; the compiler picks its own convolution
        return False
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def runs_on_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `conv3d(x, weight, ...)` calls oneDNN directly (float32 CPU tensors, a kernel wider than 1 in H or
    W, no gradient needed)."""
    return (weight.dim() == 5 and (weight.shape[-1] > 1 or weight.shape[-2] > 1)) and _onednn_usable(x, weight)


def channels_last_weight(weight: torch.Tensor) -> torch.Tensor:
    """A channels-last-3d copy of a conv weight (C_out, C_in, kt, kh, kw), detached: what `conv3d` takes to run
    oneDNN channels-last."""
    return weight.detach().contiguous(memory_format=torch.channels_last_3d)


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous()


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int, int],
           padding: tuple[int, int, int]) -> torch.Tensor:
    """`F.conv3d(x, weight, bias, stride, padding)` (no dilation, no groups), on oneDNN for float32 CPU tensors
    and kernels wider than 1 in H or W; channels-last there when `weight` is channels-last-3d (`x` is converted,
    the output is channels-last-3d)."""
    if runs_on_onednn(x, weight) and (bias is None or bias.dtype == torch.float32):
        if _is_channels_last(weight):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(padding), list(stride), [1, 1, 1], 1)
    return F.conv3d(x, weight, bias, stride, padding)


def causal_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int, int],
                  padding: tuple[int, int, int], cache: torch.Tensor | None = None) -> torch.Tensor:
    """`reference.causal_conv3d`: `x` (B, C, T, H, W), `padding = (pt, ph, pw)`: `2 * pt` past frames (the `cache`
    frames first, zeros for the rest), `ph` and `pw` on both sides, applied inside the convolution."""
    if x.dim() != 5:
        raise ValueError(f"causal_conv3d: x must be (B, C, T, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 5 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"causal_conv3d: weight must be (C_out, {x.shape[1]}, kt, kh, kw) to match x's channels, "
                         f"got shape {tuple(weight.shape)}")
    pt, ph, pw = padding
    past = 2 * pt
    if cache is not None and past > 0:
        x = torch.cat([cache.to(x.device), x], dim=2)
        past -= cache.shape[2]
    if past > 0:
        x = F.pad(x, (0, 0, 0, 0, past, 0))
    return conv3d(x, weight, bias, stride, (0, ph, pw))
