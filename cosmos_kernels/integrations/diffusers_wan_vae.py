"""`AutoencoderKLWan` (the Wan 2.1 VAE) on cosmos_kernels.

What diffusers computes, and what computes the same here:
- `WanCausalConv3d`: the causal time padding (the feature cache's frames, then zeros) and `F.pad` of H and W, then
  `nn.Conv3d`: `causal_conv3d`, which writes only the time padding, pads H and W inside the convolution and calls
  oneDNN directly on the CPU (PyTorch's size test sends the VAE's short batch-1 chunks to its slow path; see
  `cosmos_kernels/causal_conv/ops.py`).
- `WanResidualBlock`: `norm1` + SiLU and `norm2` + SiLU (`WanRMS_norm`, channel-first) and the causal padding of
  the conv after each: `causal_channel_rms_norm_silu`, which writes the normed frames into the time window the conv
  reads, after the cached frames of the previous chunk (diffusers writes the normed frames, then `torch.cat`s them
  behind the cache, then pads). What the block keeps for the next chunk is the window's last two frames, a view
  (diffusers clones them; their values are the same, also for a one-frame chunk: an earlier frame or a zero
  frame in front, as diffusers' padding would have put it).
- `WanEncoder3d`: its layers run in diffusers' order, but a residual block hands on its conv2 output and shortcut
  unsummed: the next block's norm1 adds them (`residual_causal_channel_rms_norm_silu`, which also writes the sum,
  that block's shortcut), as does `norm_out`, whose SiLU and causal padding are fused the same way; a
  `ZeroPad2d((0, 1, 0, 1))` + stride-2 downsampling gets the sum written straight into its zero-padded frames
  (diffusers writes the sum, then a padded copy). Attention blocks, and layers other than these, get the sum.
The decoder's `norm_out` + SiLU and residual sums, and the mid-block attention's norm (of (B*T, C, H, W) images,
without SiLU) run as diffusers has them.
"""

from __future__ import annotations

import torch
from diffusers.models.autoencoders import autoencoder_kl_wan as wv

from cosmos_kernels import _alloc
from cosmos_kernels.causal_conv import causal_conv3d, channels_last_weight, conv3d, runs_on_onednn
from cosmos_kernels.integrations import patching as integ
from cosmos_kernels.vae_norm import (
    causal_channel_rms_norm_silu,
    channel_rms_norm_silu,
    layout,
    residual_causal_channel_rms_norm_silu,
    residual_channel_rms_norm_silu,
)


class FusedWanCausalConv3d(wv.WanCausalConv3d):
    """`WanCausalConv3d` through `causal_conv3d` (same padding, cache and weights). Where oneDNN runs it, with a
    channels-last-3d copy of the weight, kept beside the parameter (outside the state dict) and made again when the
    parameter changes (see `cosmos_kernels/causal_conv/ops.py`)."""

    def _conv_weight(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if not runs_on_onednn(x, weight):
            return weight
        key = (weight.data_ptr(), weight._version, weight.shape)
        cached = self.__dict__.get("_ck_channels_last")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_ck_channels_last"] = (key, channels_last_weight(weight))
        return cached[1]

    def forward(self, x, cache_x=None):
        pad = self._padding  # (w, w, h, h, 2 * t, 0)
        return causal_conv3d(x, self._conv_weight(x), self.bias, self.stride, (pad[4] // 2, pad[2], pad[0]),
                             cache_x)

    @property
    def past_frames(self) -> int:
        return self._padding[4]

    def forward_window(self, window: torch.Tensor) -> torch.Tensor:
        """The conv of a window that already holds the `past_frames` frames before the chunk."""
        pad = self._padding
        return conv3d(window, self._conv_weight(window), self.bias, self.stride, (0, pad[2], pad[0]))


def _cache_frames(x: torch.Tensor, feat_cache: list, idx: int) -> torch.Tensor:
    """What diffusers keeps for the next chunk: the last two frames (one earlier frame added when x has one)."""
    cache_x = x[:, :, -wv.CACHE_T:, :, :].clone()
    if cache_x.shape[2] < 2 and feat_cache[idx] is not None:
        cache_x = torch.cat([feat_cache[idx][:, :, -1, :, :].unsqueeze(2).to(cache_x.device), cache_x], dim=2)
    return cache_x


def _norm_conv(norm: wv.WanRMS_norm, conv: FusedWanCausalConv3d, x: torch.Tensor, feat_cache: list | None,
               feat_idx: list, backend: str | None,
               residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`conv(silu(norm(s)))` with diffusers' feature-cache steps, `s = x + residual` (`x` without one); returns
    `(conv output, s)`."""
    bias = norm.bias.reshape(-1) if isinstance(norm.bias, torch.Tensor) else None
    gamma = norm.gamma.reshape(-1)
    idx = None if feat_cache is None else feat_idx[0]
    past = None if idx is None else feat_cache[idx]
    if idx is None or conv.past_frames < wv.CACHE_T or (past is not None and past.shape[2] > conv.past_frames):
        if residual is None:
            s, normed = x, channel_rms_norm_silu(x, gamma, bias, backend=backend)
        else:
            s, normed = residual_channel_rms_norm_silu(x, residual, gamma, bias, backend=backend)
        if idx is None:
            return conv(normed), s
        cache_x = _cache_frames(normed, feat_cache, idx)  # a window other than diffusers' two cached frames
        out = conv(normed, past)
    else:
        past = None if past is None else past.to(x.device)
        if residual is None:
            s, window = x, causal_channel_rms_norm_silu(x, gamma, bias, past=past, past_frames=conv.past_frames,
                                                        backend=backend)
        else:
            s, window = residual_causal_channel_rms_norm_silu(x, residual, gamma, bias, past=past,
                                                              past_frames=conv.past_frames, backend=backend)
        cache_x = window[:, :, -wv.CACHE_T:]
        out = conv.forward_window(window)
    feat_cache[idx] = cache_x
    feat_idx[0] += 1
    return out, s


class FusedWanResidualBlock(wv.WanResidualBlock):
    """`WanResidualBlock` with each RMS norm + SiLU as one op; `forward_parts` leaves the residual sum to the
    caller (the next block's norm adds it: `residual_causal_channel_rms_norm_silu`)."""

    _ck_backend: str | None = None

    def fuses(self) -> bool:
        return not (self.training and self.dropout.p > 0)

    def forward_parts(self, x: torch.Tensor, residual: torch.Tensor | None, feat_cache: list | None,
                      feat_idx: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The block on `x + residual` (`x` without one); returns `(conv2 output, shortcut)`, whose sum is
        the block's output."""
        out, s = _norm_conv(self.norm1, self.conv1, x, feat_cache, feat_idx, self._ck_backend, residual)
        h = self.conv_shortcut(s)
        out, _ = _norm_conv(self.norm2, self.conv2, out, feat_cache, feat_idx, self._ck_backend)
        return out, h

    def forward(self, x, feat_cache=None, feat_idx=[0]):  # noqa: B006 (diffusers' signature)
        if not self.fuses():
            return super().forward(x, feat_cache, feat_idx)
        out, h = self.forward_parts(x, None, feat_cache, feat_idx)
        return out + h


def _pads_then_downsamples(layer: torch.nn.Module) -> bool:
    """A `WanResample` whose spatial step is diffusers' `ZeroPad2d((0, 1, 0, 1))` and stride-2 `Conv2d`."""
    if type(layer) is not wv.WanResample or layer.mode not in ("downsample2d", "downsample3d"):
        return False
    pad, conv = layer.resample[0], layer.resample[1]
    return type(pad) is torch.nn.ZeroPad2d and tuple(pad.padding) == (0, 1, 0, 1) and type(conv) is torch.nn.Conv2d


def _downsample_sum(layer: wv.WanResample, x: torch.Tensor, residual: torch.Tensor, feat_cache: list | None,
                    feat_idx: list) -> torch.Tensor:
    """`layer(x + residual)` with the sum written into the zero-padded frames the stride-2 conv reads (diffusers
    writes the sum, then a padded copy of it): a (B, T, C, H + 1, W + 1) buffer, the (B * T, C, H, W) images of
    diffusers' reshape, channels-last where `x` is, its last row and column zeroed."""
    b, c, t, h, w = x.shape
    if layout.channels_last(x):
        frames = _alloc.empty((b, t, h + 1, w + 1, c), dtype=x.dtype, device=x.device).permute(0, 1, 4, 2, 3)
    else:
        frames = _alloc.empty((b, t, c, h + 1, w + 1), dtype=x.dtype, device=x.device)
    padded = frames.permute(0, 2, 1, 3, 4)
    if torch.compiler.is_compiling():  # Dynamo refuses a strided `out=`; the compiler fuses the sum into the copy
        padded[:, :, :, :h, :w].copy_(x + residual)
    else:
        torch.add(x, residual, out=padded[:, :, :, :h, :w])
    padded[:, :, :, h].zero_()
    padded[:, :, :, :h, w].zero_()
    x = layer.resample[1](frames.reshape(b * t, c, h + 1, w + 1))
    x = x.view(b, t, x.size(1), x.size(2), x.size(3)).permute(0, 2, 1, 3, 4)
    if layer.mode == "downsample3d" and feat_cache is not None:  # diffusers' time step, as it has it
        idx = feat_idx[0]
        if feat_cache[idx] is None:
            feat_cache[idx] = x.clone()
        else:
            cache_x = x[:, :, -1:, :, :].clone()
            x = layer.time_conv(torch.cat([feat_cache[idx][:, :, -1:, :, :], x], 2))
            feat_cache[idx] = cache_x
        feat_idx[0] += 1
    return x


def _layer(layer: torch.nn.Module, x: torch.Tensor, residual: torch.Tensor | None, feat_cache: list | None,
           feat_idx: list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One layer of an encoder on `x + residual`; returns its output as a pair `(x, residual)` (residual None
    when it is summed)."""
    if isinstance(layer, FusedWanResidualBlock) and layer.fuses():
        return layer.forward_parts(x, residual, feat_cache, feat_idx)
    if residual is not None and _pads_then_downsamples(layer):
        return _downsample_sum(layer, x, residual, feat_cache, feat_idx), None
    if residual is not None:
        x = x + residual
    if feat_cache is None or isinstance(layer, wv.WanAttentionBlock):
        return layer(x), None
    return layer(x, feat_cache=feat_cache, feat_idx=feat_idx), None


class FusedWanEncoder3d(wv.WanEncoder3d):
    """`WanEncoder3d` whose residual sums are added by the norm that reads them next (the following block's norm1,
    or `norm_out`), and whose `norm_out` + SiLU writes the time window of `conv_out`."""

    _ck_backend: str | None = None

    def forward(self, x, feat_cache=None, feat_idx=[0]):  # noqa: B006 (diffusers' signature)
        if feat_cache is not None:
            idx = feat_idx[0]
            cache_x = _cache_frames(x, feat_cache, idx)
            x = self.conv_in(x, feat_cache[idx])
            feat_cache[idx] = cache_x
            feat_idx[0] += 1
        else:
            x = self.conv_in(x)
        residual = None
        for layer in self.down_blocks:
            x, residual = _layer(layer, x, residual, feat_cache, feat_idx)
        mid = self.mid_block
        if type(mid) is wv.WanMidBlock:
            x, residual = _layer(mid.resnets[0], x, residual, feat_cache, feat_idx)
            for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
                if attn is not None:
                    x, residual = _layer(attn, x, residual, feat_cache, feat_idx)
                x, residual = _layer(resnet, x, residual, feat_cache, feat_idx)
        else:
            x, residual = _layer(mid, x, residual, feat_cache, feat_idx)
        out, _ = _norm_conv(self.norm_out, self.conv_out, x, feat_cache, feat_idx, self._ck_backend, residual)
        return out


def _why_not_norm(norm: torch.nn.Module, channels: int) -> str | None:
    if type(norm) is not wv.WanRMS_norm or not norm.channel_first:
        return "a norm is not a channel-first WanRMS_norm"
    if norm.gamma.numel() != channels or abs(norm.scale - channels**0.5) > 1e-9 * channels:
        return "a norm's gamma or scale does not match its channels"
    if isinstance(norm.bias, torch.Tensor) and norm.bias.numel() != channels:
        return "a norm's bias does not match its channels"
    if not isinstance(norm.bias, torch.Tensor) and norm.bias != 0.0:
        return "a norm's constant bias is not 0"
    return None


def _why_not_conv(conv: torch.nn.Module) -> str | None:
    if type(conv) is not wv.WanCausalConv3d:
        return f"{type(conv).__name__} is not diffusers' WanCausalConv3d"
    if conv.dilation != (1, 1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
        return "dilated, grouped or not zero-padded"
    return None


def _why_not_block(block: torch.nn.Module) -> str | None:
    if type(block) is not wv.WanResidualBlock:
        return f"{type(block).__name__} is not diffusers' WanResidualBlock"
    if type(block.nonlinearity) is not torch.nn.SiLU:
        return f"its nonlinearity is {type(block.nonlinearity).__name__}, not SiLU"
    why_conv = _why_not_conv(block.conv1) or _why_not_conv(block.conv2)
    if why_conv:
        return f"a conv: {why_conv}"
    return _why_not_norm(block.norm1, block.in_dim) or _why_not_norm(block.norm2, block.out_dim)


def _why_not_encoder(encoder: torch.nn.Module) -> str | None:
    if type(encoder) is not wv.WanEncoder3d:
        return f"{type(encoder).__name__} is not diffusers' WanEncoder3d"
    if type(encoder.nonlinearity) is not torch.nn.SiLU:
        return f"its nonlinearity is {type(encoder.nonlinearity).__name__}, not SiLU"
    why_conv = _why_not_conv(encoder.conv_out)
    if why_conv:
        return f"conv_out: {why_conv}"
    return _why_not_norm(encoder.norm_out, encoder.conv_out.in_channels)


def plan(model: torch.nn.Module, options: integ.KernelOptions) -> tuple[list[integ.Swap], integ.PatchSummary]:
    summary = integ.PatchSummary(type(model).__name__)
    swaps: list[integ.Swap] = []
    block_cls = integ.with_backend(FusedWanResidualBlock, options.backend)
    encoder_cls = integ.with_backend(FusedWanEncoder3d, options.backend)
    for name, module in model.named_modules():
        if type(module) is wv.WanCausalConv3d:
            why = _why_not_conv(module)
            if why:
                summary.left_alone[name] = why
                continue
            swaps.append(integ.Swap("class", module, FusedWanCausalConv3d))
            summary.add("causal conv3d (spatial padding in the conv, oneDNN on the CPU)", name)
        elif isinstance(module, wv.WanResidualBlock) and options.adaptive_norm:
            why = _why_not_block(module)
            if why:
                summary.left_alone[name] = why
            else:
                swaps.append(integ.Swap("class", module, block_cls))
                summary.add("residual block: RMS norm + SiLU (norm1, norm2)", name)
        elif isinstance(module, wv.WanEncoder3d) and options.adaptive_norm:
            why = _why_not_encoder(module)
            if why:
                summary.left_alone[name] = why
            else:
                swaps.append(integ.Swap("class", module, encoder_cls))
                summary.add("encoder: residual sums in the next norm, norm_out + SiLU", name)
    if not options.adaptive_norm:
        summary.left_alone["norms"] = "adaptive_norm=False"
    summary.left_alone["decoder norm_out, attention norm, decoder residual sums"] = (
        "written in the decoder's forward, without SiLU, or across its modules: diffusers' code")
    return swaps, summary
