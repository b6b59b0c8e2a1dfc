"""The served models and GPUs of ``footprint demo``: published measurements and prices.

Figures and where they come from (the demo's own choices are marked *assumption*):

* ``T(B)`` and ``P(B)`` (output tokens/s and W of a replica running ``B`` requests): The
  ML.ENERGY Benchmark v3.0 (vLLM 0.11.1, December 2025), Llama 3.1 8B on 1x H100 and 70B
  on 4x H100, read off the figures "Token throughput vs. batch size" and "Average GPU
  power vs. batch size" of J.-W. Chung, "LLM Inference Energy: A Longitudinal Analysis",
  ML.ENERGY blog, 2026-02-09,
  https://ml.energy/blog/measurement/energy/llm-inference-energy-a-longitudinal-analysis
  (the figures' data: github.com/ml-energy/blog, docs/posts/assets/llm-energy-over-time/).
  Their ratio is the post's energy per output token, e.g. 8B at batch 64: 610 W /
  5147 tokens/s = 0.12 J (0.20 J with vLLM 0.5.4 in v2.0). Method: J.-W. Chung et al.,
  "The ML.ENERGY Benchmark", NeurIPS 2025 Datasets and Benchmarks, arXiv:2505.06371.
  Below the smallest measured batch (16) throughput scales with the batch and power is
  interpolated linearly to idle (*assumption*: no measurement there). The simulated GPUs
  do not draw ``P(B)`` itself but each step's energy by ``footprint.demo.costs``, whose
  step cost model is fitted to these points (prompts then cost what they cost).
* Batch limits (``max_num_seqs``): 128 for 8B (18 ms per step, 55 tokens/s per request)
  and 384 for 70B (72 ms per step): inside the 50 and 100 ms median inter-token latency
  constraints ML.ENERGY v3.0 compares configurations at (J.-W. Chung, "Reading the
  ML.ENERGY Leaderboard v3.0", ML.ENERGY blog, 2026-01-13).
* Request lengths: ML.ENERGY v3.0 Text Conversation, mean 717 output tokens; about 224
  input tokens (same post, 2026-01-13).
* GPU: NVIDIA H100 80GB HBM3 (SXM), 700 W power cap (nvidia-smi "Pwr:Usage/Cap" in
  github.com/wilicc/gpu-burn/issues/114, 2024; the TDP line of the ML.ENERGY power
  figure); idle (held, weights loaded, nothing running) 100 W (*assumption*: the same
  nvidia-smi output shows 140-145 W for H100s with 72 GB allocated at 0 % utilisation;
  an H100 with nothing loaded draws less).
* Cold starts 45 s (8B) and 120 s (70B): *assumptions*.
* Money: the demo states no price of its own. Its records are priced by footprint's
  pricing for the zone they ran in (``DEMO_REGION``, aws:us-east-1: the on-demand price
  of an H100 there, with its source, in ``regions/gpu_prices.csv``), and the demo's
  summary quotes the $/GPU-hour and $ per 1M output tokens of the report it writes
  (``summary.add_report_figures``): one price, the one the records carry. A rented GPU's
  price includes its electricity. Hosted APIs charge $0.03-0.22 (8B) and $0.28-0.88
  (70B) per 1M output tokens (tests/test_demo.py has the list and source): an AWS
  on-demand H100 serving this workload costs more than that.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

# (batch size = max_num_seqs, output tokens/s of the replica, average W of all its GPUs):
# ML.ENERGY Benchmark v3.0, vLLM 0.11.1, H100 (see the module docstring for the source).
LLAMA_8B_H100X1 = (
    (16, 1954, 513),
    (32, 3391, 560),
    (64, 5147, 610),
    (96, 6260, 644),
    (128, 7037, 669),
    (192, 8223, 688),
    (256, 9010, 691),
    (384, 9248, 687),
    (512, 9806, 688),
    (768, 9603, 685),
)
LLAMA_70B_H100X4 = (
    (16, 863, 1804),
    (32, 1487, 1794),
    (64, 2511, 2002),
    (96, 3244, 2102),
    (128, 3876, 2184),
    (192, 4461, 2293),
    (256, 4915, 2354),
    (384, 5319, 2344),
    (512, 5921, 2493),
    (768, 6507, 2535),
    (1024, 6827, 2548),
)

GPU_NAME = "NVIDIA H100 80GB HBM3"
GPU_TDP_W = 700.0  # H100 SXM power cap (nvidia-smi; see the module docstring)
GPU_IDLE_W = 100.0  # held, weights loaded, nothing running: assumption (see docstring)
MEASUREMENTS_SOURCE = (
    "ML.ENERGY Benchmark v3.0 (vLLM 0.11.1), Llama 3.1 on H100: "
    "https://ml.energy/blog/measurement/energy/llm-inference-energy-a-longitudinal-analysis"
)

INPUT_TOKENS = (16, 1024)  # log-uniform: mean 242 (ML.ENERGY chat: about 224)
OUTPUT_TOKENS = (64, 2560)  # log-uniform: mean 677 (ML.ENERGY chat: 717)
MEAN_OUTPUT_TOKENS = (OUTPUT_TOKENS[1] - OUTPUT_TOKENS[0]) / math.log(
    OUTPUT_TOKENS[1] / OUTPUT_TOKENS[0]
)  # 677
PREFILL_CHUNK_TOKENS = 2048  # prompt tokens one engine step prefills (chunked prefill)


@dataclass(frozen=True)
class DemoModel:
    """A served model: its replicas, engine limits, measured speed and power, traffic."""

    name: str
    gpus_per_replica: int  # tensor parallel degree
    max_replicas: int
    max_num_seqs: int  # the engine's batch limit
    cold_start_s: float  # provisioning to ready (weights loaded): assumption
    measured: tuple[tuple[int, int, int], ...]  # (batch, tokens/s, W of the replica)
    weight: float  # share of the requests
    burst: tuple[int, int]  # requests in one burst of its traffic (log-uniform)

    def throughput(self, batch: int) -> float:
        """Output tokens/s of one replica running ``batch`` requests."""
        return _interpolate(self.measured, batch, 1, 0.0)

    def power_w(self, batch: int) -> float:
        """Average W of one replica's GPUs together with ``batch`` requests running."""
        return _interpolate(self.measured, batch, 2, GPU_IDLE_W * self.gpus_per_replica)

    @property
    def requests_per_s(self) -> float:
        """What one replica completes per second at its batch limit (mean lengths)."""
        return self.throughput(self.max_num_seqs) / MEAN_OUTPUT_TOKENS


def _interpolate(
    points: tuple[tuple[int, int, int], ...], batch: int, column: int, at_zero: float
) -> float:
    """Linear in the batch size between measured points, towards ``at_zero`` below the
    first one, flat above the last one."""
    if batch <= 0:
        return at_zero
    if batch <= points[0][0]:
        return at_zero + (points[0][column] - at_zero) * batch / points[0][0]
    if batch >= points[-1][0]:
        return float(points[-1][column])
    i = bisect_right([p[0] for p in points], batch)
    lo, hi = points[i - 1], points[i]
    return lo[column] + (hi[column] - lo[column]) * (batch - lo[0]) / (hi[0] - lo[0])


MODELS = (
    DemoModel("llama-3.1-8b", 1, 4, 128, 45.0, LLAMA_8B_H100X1, 0.6, (512, 4096)),
    DemoModel("llama-3.1-70b", 4, 2, 384, 120.0, LLAMA_70B_H100X4, 0.4, (768, 3072)),
)
