"""`cosmos-policy roofline`: the counts of both backends on meta, the predictions and the subcommand."""

from __future__ import annotations

import argparse
import importlib.util
import json

import pytest
import torch

from cosmos_policy.cli import roofline, roofline_cards
from cosmos_policy.errors import UsageError
from cosmos_policy.model import CosmosDiT, with_text_tokens
from cosmos_policy.model.config import DiTConfig

KEYS = ("launches_per_pass", "flops_per_pass", "bytes_per_pass", "nonmatmul_bytes_per_pass",
        "predicted_ms_per_pass", "predicted_ms_per_chunk")
HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    roofline.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def libero_2b():
    """The 2B network at LIBERO shapes with a typical instruction's padding (the VAE is counted elsewhere)."""
    counted, setup = roofline.count("2b", "libero", vae=False)
    return counted, setup, roofline.summarize(counted, setup["passes_per_chunk"], list(roofline.GPUS))


def test_2b_libero_fused_halves_launches_and_nonmatmul_bytes(libero_2b):
    _, setup, report = libero_2b
    assert setup["tokens"] == 1764 and setup["passes_per_chunk"] == 5 and setup["text_tokens"] < 64
    ref, fused = report["reference"], report["fused"]
    assert fused["launches_per_pass"] <= 0.5 * ref["launches_per_pass"]
    assert fused["nonmatmul_bytes_per_pass"] <= 0.5 * ref["nonmatmul_bytes_per_pass"]
    # Both run the same network: the fused one skips only the cached cross-attention K/V projections.
    assert 0.9 * ref["flops_per_pass"] < fused["flops_per_pass"] < ref["flops_per_pass"]
    for gpu in roofline.GPUS:
        assert fused["predicted_ms_per_chunk"][gpu] < ref["predicted_ms_per_chunk"][gpu]


def test_2b_libero_fused_pass_is_near_matmul_bound(libero_2b):
    """What the fused pass spends beyond its matrix work is at most a quarter of its matrix time on an H100."""
    counted, _, report = libero_2b
    ratio = report["fused"]["overhead_vs_matrix_per_pass"]["h100"]
    gpu, totals = roofline.GPUS["h100"], roofline._totals(counted["fused"].per_pass)
    matrix = totals.flops / (989.4e12 * 0.70)
    beyond = totals.nonmatmul_bytes / (3.35e12 * 0.80) + totals.launches * 2e-6
    assert ratio == pytest.approx(beyond / matrix) and gpu.launch_us == 2.0
    assert ratio <= 0.25
    assert report["reference"]["overhead_vs_matrix_per_pass"]["h100"] > 1.0


def test_2b_flops_match_the_parameter_count(libero_2b):
    counted, _, _ = libero_2b
    config = DiTConfig.cosmos_predict2_2b()
    d, hidden, blocks, tokens = config.model_channels, config.mlp_hidden, config.num_blocks, 1764
    # Per block and token: q, k, v, out projections (4 d^2), cross q and out (2 d^2), the MLP (2 d hidden).
    per_block = 2 * tokens * (6 * d * d + 2 * d * hidden)
    self_attention = 4 * tokens * tokens * d
    dit = sum(r.cost.flops for r in counted["fused"].dit_pass)
    assert blocks * (per_block + self_attention) < dit < 1.05 * blocks * (per_block + self_attention)


def test_padded_text_reaches_the_network_as_metadata():
    from cosmos_policy.model.layout import get_layout

    config, layout = DiTConfig.tiny(), get_layout("libero")
    padded = roofline.count_network(config, layout, 13)["fused"][0]
    dense = roofline.count_network(config, layout, 512)["fused"][0]
    # Cross-attention over 13 instruction tokens plus one zero row that counts for the other 499, not over 512.
    tokens, heads_dim = 1764, config.model_channels
    saved = config.num_blocks * 4 * tokens * (512 - 14) * heads_dim
    assert sum(r.cost.flops for r in dense) - sum(r.cost.flops for r in padded) == saved


def test_no_prediction_beats_the_peak(libero_2b):
    counted, setup, report = libero_2b
    passes = setup["passes_per_chunk"]
    for backend, c in counted.items():
        for name, gpu in roofline.GPUS.items():
            assert gpu.matmul_flops_per_s <= gpu.peak_tflops * 1e12 and gpu.bytes_per_s <= gpu.peak_tbps * 1e12
            for records, key in ((c.per_pass, "predicted_ms_per_pass"), (c.chunk(passes), "predicted_ms_per_chunk")):
                flops = sum(r.cost.flops for r in records)
                moved = sum(r.cost.bytes_read + r.cost.bytes_written for r in records)
                floor_ms = 1e3 * max(flops / (gpu.peak_tflops * 1e12), moved / (gpu.peak_tbps * 1e12))
                assert report[backend][key][name] >= floor_ms > 0


def test_a_card_faster_than_its_peak_is_rejected():
    with pytest.raises(ValueError, match="efficiencies"):
        roofline_cards.GPU("x", 100.0, 1.0, 1.2, 0.8, 2.0, "peak", "measured")


def test_prediction_per_op_is_the_documented_roofline():
    gpu = roofline_cards.GPU("x", 100.0, 2.0, 0.5, 0.5, 3.0, "peak", "assumed")
    assert gpu.op_seconds(10**12, 0, 1) == pytest.approx(1 / 50 + 3e-6)  # matrix-bound
    assert gpu.op_seconds(0, 10**12, 2) == pytest.approx(1.0 + 6e-6)  # bandwidth-bound
    assert gpu.op_seconds(0, 0, 0) == 0


def test_cli_json_has_the_keys_and_fused_wins(capsys):
    assert roofline.run(_args("--config", "tiny", "--suite", "libero", "--gpu", "h100,rtx4090", "--json")) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout holds the one JSON object only
    assert set(report) == {"reference", "fused"}
    for backend in report.values():
        for key in KEYS:
            assert key in backend
        for key in ("predicted_ms_per_pass", "predicted_ms_per_chunk"):
            assert set(backend[key]) == {"h100", "rtx4090"}
            assert all(v > 0 for v in backend[key].values())
        assert ("vae_encode" in backend["parts"]) == HAS_DIFFUSERS
    ref, fused = report["reference"], report["fused"]
    assert fused["launches_per_pass"] < ref["launches_per_pass"]
    assert fused["nonmatmul_bytes_per_pass"] < ref["nonmatmul_bytes_per_pass"]
    assert fused["predicted_ms_per_chunk"]["h100"] < ref["predicted_ms_per_chunk"]["h100"]
    chunk_vs_passes = ref["predicted_ms_per_chunk"]["h100"] - 5 * ref["predicted_ms_per_pass"]["h100"]
    assert chunk_vs_passes > 0 if HAS_DIFFUSERS else chunk_vs_passes == pytest.approx(0, abs=1e-9)
    assert "roofline" in captured.err


@pytest.mark.skipif(not HAS_DIFFUSERS, reason="the VAE is diffusers' AutoencoderKLWan")
def test_vae_encode_is_counted_at_the_real_size():
    from cosmos_policy.model.layout import get_layout

    records = roofline.count_vae_encode(get_layout("libero"))
    flops = sum(r.cost.flops for r in records)
    assert 1e12 < flops < 4e12  # two 4-frame chunks at 224 x 224 through the Wan2.1 encoder (~2 TFLOP)
    assert any(r.name == "aten.convolution" for r in records)


@pytest.mark.skipif(not HAS_DIFFUSERS, reason="the VAE is diffusers' AutoencoderKLWan")
def test_fused_vae_encode_is_counted_with_its_kernels():
    """The fused policy's VAE (patched with cosmos_kernels) does the same matrix work in far fewer launches and
    bytes: at most half the launches and a third of the non-matmul bytes of diffusers' modules."""
    from cosmos_kernels.tools.dispatch_counter import Totals
    from cosmos_policy.model.layout import get_layout

    totals = {}
    for backend in ("reference", "fused"):
        records = roofline.count_vae_encode(get_layout("libero"), backend=backend)
        totals[backend] = Totals()
        for record in records:
            totals[backend].add(record)
    ref, fused = totals["reference"], totals["fused"]
    assert fused.flops == ref.flops
    assert any(name.startswith("cosmos_kernels::") for name in fused.by_op)
    assert not any(name.startswith("cosmos_kernels::") for name in ref.by_op)
    assert 2 * fused.launches <= ref.launches and 3 * fused.nonmatmul_bytes <= ref.nonmatmul_bytes


def test_human_table(capsys):
    assert roofline.run(_args("--config", "tiny", "--gpu", "h100", "--no-vae")) == 0
    out = capsys.readouterr().out
    assert "kernel launches" in out and "non-matmul GB moved" in out and "h100 (H100 SXM)" in out
    assert "peak (datasheet)" in out and "VAE encode" in out


@pytest.mark.parametrize("argv, flag", [(("--gpu", "a100"), "--gpu"), (("--config", "7b"), "--config"),
                                        (("--suite", "bridge"), "--suite"), (("--text-tokens", "0"), "--text-tokens")])
def test_bad_input_is_a_usage_error(argv, flag, capsys):
    with pytest.raises(UsageError, match=flag):
        roofline.run(_args("--config", "tiny", "--no-vae", *argv))
    assert roofline.main(["--config", "tiny", "--no-vae", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cosmos-policy: error: " + flag)


def test_text_token_mark_is_exact_on_real_tensors():
    torch.manual_seed(0)
    net = CosmosDiT(DiTConfig.tiny(), backend="fused").eval()
    x = torch.randn(1, 16, 3, 8, 8)
    times = torch.tensor([[0.0, 0.3, 0.3]])
    mask = torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 3, 1, 1)
    text = torch.zeros(1, 512, 64)
    text[:, :7] = torch.randn(1, 7, 64)
    marked = with_text_tokens(text.clone(), 7)
    with torch.no_grad():
        want = net(x, times, text, mask)
        got = net(x, times, marked, mask)
    assert torch.equal(got, want)


@pytest.mark.parametrize("steps, passes", [(1, 1), (2, 1), (3, 3), (None, 5), (10, 10)])
def test_steps_set_the_passes_per_chunk(steps, passes):
    """The official rule: 1 or 2 steps are one prediction at sigma_max; N >= 3 steps are N network passes."""
    counted, setup = roofline.count("tiny", "libero", vae=False, steps=steps)
    assert setup["passes_per_chunk"] == passes and setup["steps"] == (5 if steps is None else steps)
    report = roofline.summarize(counted, setup["passes_per_chunk"], ["h100"])
    fused = report["fused"]
    assert fused["passes_per_chunk"] == passes
    assert fused["launches_per_chunk"] == passes * fused["launches_per_pass"]


def test_steps_flag_in_the_json_and_bad_values(capsys):
    assert roofline.main(["--config", "tiny", "--no-vae", "--json", "--steps", "1"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert roofline.main(["--config", "tiny", "--no-vae", "--json"]) == 0
    five = json.loads(capsys.readouterr().out)
    assert one["fused"]["passes_per_chunk"] == 1 and five["fused"]["passes_per_chunk"] == 5
    assert one["fused"]["predicted_ms_per_chunk"]["h100"] < five["fused"]["predicted_ms_per_chunk"]["h100"]
    for bad in ("0", "101", "two"):
        with pytest.raises(SystemExit) as exit_info:
            roofline.main(["--config", "tiny", "--no-vae", "--steps", bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "argument --steps: expected a whole number 1..100" in err[-1]


# -- --fp8 ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def libero_2b_fp8():
    counted, setup = roofline.count("2b", "libero", vae=False, fp8=True)
    return counted, setup, roofline.summarize(counted, setup["passes_per_chunk"], list(roofline.GPUS))


def test_counter_sees_the_fp8_gemm_and_its_quantizers():
    """`aten._scaled_mm`: 2*M*N*K FLOPs, e4m3 operands at 1 byte per element (and fp32 scales); the quantizers are
    one launch each, reading the bf16 rows and writing e4m3 values and fp32 row scales."""
    from cosmos_kernels.backends import meta_as_cuda
    from cosmos_kernels.fp8 import fp8_linear, quantize_rowwise
    from cosmos_kernels.tools.dispatch_counter import DispatchCounter

    m, n, k = 100, 48, 80
    meta = torch.device("meta")
    x = torch.empty(m, k, dtype=torch.bfloat16, device=meta)
    w = torch.empty(n, k, dtype=torch.float8_e4m3fn, device=meta)
    with torch.no_grad(), meta_as_cuda(), DispatchCounter() as counter:
        values, scales = quantize_rowwise(x)
        fp8_linear(values, scales, w, torch.empty(n, 1, device=meta))
    launched = {r.name: r.cost for r in counter.records if r.cost.launches}
    assert set(launched) == {"cosmos_kernels::quantize_rowwise_triton", "aten._scaled_mm"}
    q, mm = launched["cosmos_kernels::quantize_rowwise_triton"], launched["aten._scaled_mm"]
    assert (q.launches, q.flops, q.bytes_read, q.bytes_written) == (1, 0, 2 * m * k, m * k + 4 * m)
    assert (mm.launches, mm.flops) == (1, 2 * m * n * k)
    assert mm.bytes_read == m * k + n * k + 4 * (m + n) and mm.bytes_written == 2 * m * n


def test_fp8_pass_moves_its_gemms_to_fp8(libero_2b, libero_2b_fp8):
    """Six FP8 GEMMs per block (the QKV projection that norms and rotates q and k in its epilogue, the cross-attention
    query that norms its heads in its epilogue, the MLP's first layer with the GELU and the quantization in its
    epilogue, three output projections with the gated residual) carry the same matrix work as the bf16 token GEMMs;
    no plain `_scaled_mm` and no norm launch of their own are left; the reference is untouched. Both attentions
    (heads of 128) write e4m3 with a scale per (token, head) for the output projections (their QK^T and PV stay
    16-bit: not FP8 FLOPs)."""
    _, _, bf16 = libero_2b
    counted, setup, fp8 = libero_2b_fp8
    blocks = DiTConfig.cosmos_predict2_2b().num_blocks
    ops = fp8["fused"]["ops_per_pass"]
    gated = "cosmos_kernels::fp8_linear_gated_residual_triton"  # the output projections, adding the residual
    gelu = "cosmos_kernels::fp8_linear_gelu_quantize_triton"  # the MLP's first layer, GELU and quantization fused
    qkv = "cosmos_kernels::fp8_linear_qk_norm_rope_triton"  # the QKV projection, q / k normed and rotated
    cross_q = "cosmos_kernels::fp8_linear_head_norm_triton"  # the cross-attention query, its heads normed
    assert setup["fp8"] and ops[gated]["calls"] == 3 * blocks
    assert ops[gelu]["calls"] == ops[qkv]["calls"] == ops[cross_q]["calls"] == blocks
    assert {qkv, cross_q, gelu, gated} <= roofline_cards.FP8_OPS
    assert "aten._scaled_mm" not in ops and "cosmos_kernels::qk_norm_rope" not in ops
    attention = "cosmos_kernels::attention_fp8_triton"
    assert ops[attention]["calls"] == 2 * blocks and attention not in roofline_cards.FP8_OPS
    assert "scaled_dot_product_attention" not in ops
    assert "cosmos_kernels::quantize_rowwise_triton" not in ops  # the attention outputs: quantized in the attention
    assert "cosmos_kernels::gelu_quantize_rowwise_triton" not in ops and "aten.gelu" not in ops
    assert fp8["fused"]["flops_per_pass"] == bf16["fused"]["flops_per_pass"]
    assert fp8["reference"] == bf16["reference"]
    assert not any(r.name in roofline_cards.FP8_OPS for r in counted["reference"].per_pass)
    for gpu in ("h100", "h200", "b200", "l40s"):  # compute-bound cards: the FP8 pass is faster
        assert fp8["fused"]["predicted_ms_per_pass"][gpu] < bf16["fused"]["predicted_ms_per_pass"][gpu]


def test_no_fp8_prediction_beats_the_peak(libero_2b_fp8):
    counted, setup, report = libero_2b_fp8
    passes = setup["passes_per_chunk"]
    for backend, c in counted.items():
        for name, gpu in roofline.GPUS.items():
            assert 0 < gpu.fp8_flops_per_s <= gpu.peak_fp8_tflops * 1e12 and gpu.fp8_source
            for records, key in ((c.per_pass, "predicted_ms_per_pass"), (c.chunk(passes), "predicted_ms_per_chunk")):
                fp8_ops = roofline_cards.FP8_OPS
                matrix = sum(r.cost.flops / ((gpu.peak_fp8_tflops if r.name in fp8_ops else gpu.peak_tflops) * 1e12)
                             for r in records)
                moved = sum(r.cost.bytes_read + r.cost.bytes_written for r in records)
                floor_ms = 1e3 * max(matrix, moved / (gpu.peak_tbps * 1e12))
                assert report[backend][key][name] >= floor_ms > 0


def test_fp8_flag_in_the_json(capsys):
    assert roofline.main(["--config", "tiny", "--no-vae", "--json", "--fp8", "--gpu", "h100"]) == 0
    report = json.loads(capsys.readouterr().out)
    fused, ref = report["fused"]["ops_per_pass"], report["reference"]["ops_per_pass"]
    assert any(name in roofline_cards.FP8_OPS for name in fused)
    assert not any(name in roofline_cards.FP8_OPS for name in ref)
    assert roofline.main(["--config", "tiny", "--no-vae", "--fp8", "--gpu", "thor"]) == 0
    out = capsys.readouterr().out
    assert "token GEMMs in FP8 e4m3" in out and "FP8 TFLOP/s used / peak" in out and "FP8: dense" in out
def test_predict2_5_chunk_is_near_predict2_and_leaves_the_projection_out():
    from cosmos_policy.cli.roofline import GPUS, count, predict_seconds

    new, new_setup = count("2b", "libero", vae=False, variant="predict2.5")
    old, old_setup = count("2b", "libero", vae=False)
    assert (new_setup["passes_per_chunk"], old_setup["passes_per_chunk"], new_setup["variant"]) == (5, 5, "predict2.5")
    new_flops = sum(r.cost.flops for r in new["fused"].per_pass)
    old_flops = sum(r.cost.flops for r in old["fused"].per_pass)
    projection = 2 * 512 * 100352 * 1024
    # cross-attention over all 512 Reason1 positions costs more than over the T5 instruction's rows, the cached
    # projection nothing per pass
    assert old_flops < new_flops and projection not in {r.cost.flops for r in new["fused"].per_pass}
    ratio = predict_seconds(new["fused"].chunk(5), GPUS["h100"]) / predict_seconds(old["fused"].chunk(5), GPUS["h100"])
    assert 1.0 < ratio < 1.03  # about +2 % without the VAE encode (which both chunks share)


def test_predict2_5_report_shows_both_chunks(capsys):
    from cosmos_policy.cli import main

    assert main(["roofline", "--variant", "predict2.5", "--gpu", "h100", "--no-vae", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["predict2"]) == {"fused", "reference"}
    assert report["fused"]["passes_per_chunk"] == 5 and report["predict2"]["fused"]["passes_per_chunk"] == 5


def test_breakdown_sums_to_the_pass_and_is_printed(libero_2b_fp8, capsys):
    """The per-op groups add up to the predicted pass on every card; --breakdown prints both rankings."""
    counted, _, report = libero_2b_fp8
    fused = report["fused"]
    for gpu in roofline.GPUS:
        groups = fused["breakdown_per_pass"][gpu]
        assert sum(g["ms"] for g in groups) == pytest.approx(fused["predicted_ms_per_pass"][gpu])
        assert sum(g["launches"] for g in groups) == fused["launches_per_pass"]
        assert sum(g["nonmatmul_bytes"] for g in groups) == fused["nonmatmul_bytes_per_pass"]
        assert [g["ms"] for g in groups] == sorted((g["ms"] for g in groups), reverse=True)
    assert fused["breakdown_per_pass"]["h100"][0]["op"] in roofline_cards.FP8_OPS  # compute-bound: a GEMM first
    assert roofline.main(["--config", "tiny", "--no-vae", "--fp8", "--gpu", "h100,thor", "--breakdown"]) == 0
    out = capsys.readouterr().out
    assert "thor (Jetson AGX Thor), fused pass: top ops by predicted time" in out
    assert "h100: top ops by non-matmul bytes" in out
