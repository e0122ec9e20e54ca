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
The encoder's and decoder's `norm_out` + SiLU are written in their `forward`, the mid-block attention normalises
(B*T, C, H, W) images without SiLU, and the residual sums cross module boundaries: those run as diffusers has them.
"""

from __future__ import annotations

import torch
from diffusers.models.autoencoders import autoencoder_kl_wan as wv

from cosmos_kernels.causal_conv import causal_conv3d, channels_last_weight, conv3d, runs_on_onednn
from cosmos_kernels.integrations import patching as integ
from cosmos_kernels.vae_norm import causal_channel_rms_norm_silu, channel_rms_norm_silu


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


def _norm_silu(norm: wv.WanRMS_norm, x: torch.Tensor, backend: str | None) -> torch.Tensor:
    bias = norm.bias.reshape(-1) if isinstance(norm.bias, torch.Tensor) else None
    return channel_rms_norm_silu(x, norm.gamma.reshape(-1), bias, backend=backend)


def _cache_frames(x: torch.Tensor, feat_cache: list, idx: int) -> torch.Tensor:
    """What diffusers keeps for the next chunk: the last two frames (one earlier frame added when x has one)."""
    cache_x = x[:, :, -wv.CACHE_T:, :, :].clone()
    if cache_x.shape[2] < 2 and feat_cache[idx] is not None:
        cache_x = torch.cat([feat_cache[idx][:, :, -1, :, :].unsqueeze(2).to(cache_x.device), cache_x], dim=2)
    return cache_x


class FusedWanResidualBlock(wv.WanResidualBlock):
    """`WanResidualBlock` with each RMS norm + SiLU as one `channel_rms_norm_silu`."""

    _ck_backend: str | None = None

    def _norm_conv(self, norm, conv, x, feat_cache, feat_idx):
        if feat_cache is None:
            return conv(_norm_silu(norm, x, self._ck_backend))
        idx = feat_idx[0]
        past = feat_cache[idx]
        if conv.past_frames < wv.CACHE_T or (past is not None and past.shape[2] > conv.past_frames):
            x = _norm_silu(norm, x, self._ck_backend)  # a window other than diffusers' two cached frames
            cache_x = _cache_frames(x, feat_cache, idx)
            x = conv(x, past)
        else:
            bias = norm.bias.reshape(-1) if isinstance(norm.bias, torch.Tensor) else None
            window = causal_channel_rms_norm_silu(x, norm.gamma.reshape(-1), bias,
                                                  past=None if past is None else past.to(x.device),
                                                  past_frames=conv.past_frames, backend=self._ck_backend)
            cache_x = window[:, :, -wv.CACHE_T:]
            x = conv.forward_window(window)
        feat_cache[idx] = cache_x
        feat_idx[0] += 1
        return x

    def forward(self, x, feat_cache=None, feat_idx=[0]):  # noqa: B006 (diffusers' signature)
        if self.training and self.dropout.p > 0:
            return super().forward(x, feat_cache, feat_idx)
        h = self.conv_shortcut(x)
        x = self._norm_conv(self.norm1, self.conv1, x, feat_cache, feat_idx)
        x = self._norm_conv(self.norm2, self.conv2, x, feat_cache, feat_idx)
        return x + h


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


def plan(model: torch.nn.Module, options: integ.KernelOptions) -> tuple[list[integ.Swap], integ.PatchSummary]:
    summary = integ.PatchSummary(type(model).__name__)
    swaps: list[integ.Swap] = []
    block_cls = integ.with_backend(FusedWanResidualBlock, options.backend)
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
    if not options.adaptive_norm:
        summary.left_alone["norms"] = "adaptive_norm=False"
    summary.left_alone["norm_out, attention, residual sums"] = ("written in the encoder's / decoder's forward, "
                                                               "without SiLU, or across modules: diffusers' code")
    return swaps, summary
