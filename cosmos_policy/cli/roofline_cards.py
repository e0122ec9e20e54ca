"""The cards `cosmos-policy roofline` predicts for: each one's bf16 and FP8 dense matmul peaks, memory bandwidth and
launch cost, with where each figure comes from, and the per-op prediction max(FLOPs / rate, bytes / bandwidth) +
launches x launch cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from cosmos_kernels.tools.dispatch_counter import OpRecord

PEAK = "peak (datasheet)"
# The FP8 GEMMs (e4m3 operands, 1 byte each): `cosmos_kernels.fp8.fp8_linear`'s, the QKV projection that norms and
# rotates q and k in its epilogue, the cross-attention query's that norms its heads in its epilogue, the MLP's first
# layer with the GELU and the group-wise quantization in its epilogue, and the output projection that adds the gated
# residual.
FP8_OPS = {"aten._scaled_mm", "cosmos_kernels::fp8_linear_qk_norm_rope_triton",
           "cosmos_kernels::fp8_linear_head_norm_triton", "cosmos_kernels::fp8_linear_gelu_quantize_triton",
           "cosmos_kernels::fp8_linear_gated_residual_triton"}


@dataclass(frozen=True)
class GPU:
    """A card's bf16 dense matmul rate, memory bandwidth and per-launch cost, with where each figure comes from."""

    label: str
    peak_tflops: float  # bf16 dense tensor-core peak, FP32 accumulate
    peak_tbps: float  # memory bandwidth peak
    matmul_efficiency: float  # fraction of peak a large bf16 GEMM reaches
    bandwidth_efficiency: float  # fraction of peak a streaming kernel reaches
    launch_us: float  # cost of one kernel launch inside a CUDA graph
    peak_source: str
    efficiency_source: str
    peak_fp8_tflops: float = 0.0  # e4m3 dense tensor-core peak, FP32 accumulate (0: no FP8 tensor cores)
    fp8_source: str = ""
    fp8_efficiency: float = 0.70  # assumed: the fraction of the FP8 peak a large row-scaled FP8 GEMM reaches

    def __post_init__(self) -> None:
        if not (0 < self.matmul_efficiency <= 1 and 0 < self.bandwidth_efficiency <= 1 and self.launch_us >= 0
                and 0 < self.fp8_efficiency <= 1 and self.peak_fp8_tflops >= 0):
            raise ValueError(f"GPU {self.label}: efficiencies must lie in (0, 1] and the launch cost be >= 0")

    @property
    def matmul_flops_per_s(self) -> float:
        return self.peak_tflops * 1e12 * self.matmul_efficiency

    @property
    def fp8_flops_per_s(self) -> float:
        return self.peak_fp8_tflops * 1e12 * self.fp8_efficiency

    def rate(self, record: OpRecord) -> float:
        """The matrix rate of a recorded op: the FP8 rate for the FP8 GEMM, else the bf16 one."""
        if record.name in FP8_OPS:
            if not self.peak_fp8_tflops:
                raise ValueError(f"GPU {self.label}: no FP8 tensor cores; {record.name} cannot run there")
            return self.fp8_flops_per_s
        return self.matmul_flops_per_s

    @property
    def bytes_per_s(self) -> float:
        return self.peak_tbps * 1e12 * self.bandwidth_efficiency

    def op_seconds(self, flops: int, moved: int, launches: int, rate: float | None = None) -> float:
        rate = self.matmul_flops_per_s if rate is None else rate
        return max(flops / rate, moved / self.bytes_per_s) + launches * self.launch_us * 1e-6


_ASSUMED = "assumed: 70 % of peak matmul, 80 % of peak bandwidth, 2 us per launch in a CUDA graph"
GPUS: dict[str, GPU] = {
    "h100": GPU("H100 SXM", 989.4, 3.35, 0.70, 0.80, 2.0, PEAK + ": NVIDIA H100 datasheet (1,979 TFLOP/s bf16 "
                "with sparsity; HBM3 3.35 TB/s)", _ASSUMED,
                1978.9, "dense, the H100 datasheet's 3,958 TFLOP/s FP8 with sparsity halved"),
    "h200": GPU("H200 SXM", 989.4, 4.8, 790 / 989.4, 0.80, 2.0, PEAK + ": NVIDIA H200 datasheet (1,979 TFLOP/s "
                "bf16 with sparsity; HBM3e 4.8 TB/s)", "assumed: ~790 TFLOP/s for a large bf16 GEMM (80 % of peak); "
                "assumed: 80 % of peak bandwidth, 2 us per launch", 1978.9, "dense, the H200 datasheet's 3,958 TFLOP/s "
                "FP8 with sparsity halved"),
    "b200": GPU("B200", 2250.0, 8.0, 0.70, 0.80, 2.0, PEAK + ": NVIDIA HGX B200 datasheet (4.5 PFLOP/s bf16 with "
                "sparsity; HBM3e 8 TB/s)", _ASSUMED,
                4500.0, "dense, the HGX B200 datasheet's 72 PFLOP/s FP8 for 8 GPUs with sparsity / 16"),
    "l40s": GPU("L40S", 362.05, 0.864, 0.70, 0.80, 2.0, PEAK + ": NVIDIA L40S datasheet (362 TFLOP/s bf16 dense; "
                "GDDR6 864 GB/s)", _ASSUMED,
                733.0, "dense, the L40S datasheet (733 TFLOP/s FP8; 1,466 with sparsity)"),
    "rtx4090": GPU("RTX 4090", 165.2, 1.008, 0.70, 0.80, 2.0, PEAK + ": NVIDIA Ada whitepaper (165.2 TFLOP/s bf16 "
                   "with FP32 accumulate; 1,008 GB/s)", _ASSUMED,
                   330.3, "dense, the Ada whitepaper's FP8 rate with FP32 accumulate (660.6 with FP16 accumulate)"),
    "rtx5090": GPU("RTX 5090", 209.5, 1.792, 0.70, 0.80, 2.0, PEAK + ": NVIDIA Blackwell GeForce whitepaper "
                   "(209.5 TFLOP/s with FP32 accumulate; 1,792 GB/s)", _ASSUMED,
                   419.0, "dense, the Blackwell GeForce whitepaper's FP8 rate with FP32 accumulate (838 with FP16 "
                   "accumulate)"),
    "thor": GPU("Jetson AGX Thor", 258.75, 0.273, 0.70, 0.80, 2.0, PEAK + ", derived: Jetson AGX Thor datasheet "
                "(2,070 TFLOP/s FP4 with sparsity / 8; no bf16 figure published; LPDDR5X 273 GB/s)", _ASSUMED,
                517.5, "dense, derived: the Jetson AGX Thor datasheet's 2,070 TFLOP/s FP4 with sparsity / 4"),
}


def predict_seconds(records: list[OpRecord], gpu: GPU) -> float:
    return sum(gpu.op_seconds(r.cost.flops, r.cost.bytes_read + r.cost.bytes_written, r.cost.launches, gpu.rate(r))
               for r in records)
