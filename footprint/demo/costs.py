"""What one engine step of a continuously batching server costs: energy and time, as
known functions of its batch, calibrated on the ML.ENERGY v3.0 measurements. The demo's
simulated GPUs draw it (``footprint.demo.scheduler``), and ``footprint bench batching``
serves on it with each request's true energy.

Energy of a step, all its GPUs, their idle floor included (J)::

    E = F + a * prefill_tokens + sum over decoding sequences of (b + c * context_tokens)

and its time (s), the same shape: ``t_F + t_a * prefill_tokens + sum (t_b + t_c * ctx)``,
lengthened where needed so that the GPUs never draw more than their power cap (a
capped GPU lowers its clocks: the work takes longer, its energy stays). Every term draws
more than idle power (its J over its s), so a step's power stays within idle..cap.

Where the figures come from (the ones marked *assumption* are choices of this benchmark):

* ``F`` and the per-sequence decode energy ``s = b + c * ctx`` at the calibration
  workload's mean context: least squares over the ML.ENERGY Benchmark v3.0 points
  (``footprint.demo.models``: Llama 3.1 8B on 1x H100, 70B on 4x H100, vLLM 0.11.1)
  with batch sizes up to the engine's ``max_num_seqs``: a step at batch ``B`` takes
  ``B / throughput(B)`` s and spends ``power(B) * that`` J, less
  the prefill its requests brought (``B * mean_input / mean_output`` prompt tokens per
  step). The same for time (``t_F``, ``t_b + t_c * ctx``). Source:
  https://ml.energy/blog/measurement/energy/llm-inference-energy-a-longitudinal-analysis
* Prefill time ``t_a``: ``2 * parameters`` FLOP per prompt token at 50 % of the H100
  SXM's 989 TFLOP/s dense BF16 (NVIDIA H100 Tensor Core GPU datasheet,
  https://www.nvidia.com/en-us/data-center/h100/) per GPU: the 50 % is an *assumption*.
* Prefill energy ``a``: prompt processing is compute-bound and draws near the power cap,
  token generation is memory-bound and draws less (P. Patel et al., "Splitwise:
  Efficient Generative LLM Inference Using Phase Splitting", ISCA 2024,
  arXiv:2311.18677): ``t_a`` at idle plus 90 % of the range from idle to the cap, the
  90 % an *assumption*.
* The split of ``s`` into a part per sequence ``b`` and a part per context token ``c``
  (the KV cache each decoding sequence reads): half and half at the mean context,
  ``CONTEXT_SHARE``: an *assumption* (no published per-sequence split found).
* Idle 100 W and cap 700 W per H100, ``max_num_seqs`` and the chat workload's lengths
  (log-uniform 16-1024 input, 64-2560 output tokens; ML.ENERGY chat means about 224 and
  717): ``footprint.demo.models`` and its sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from footprint.demo.models import (
    GPU_IDLE_W,
    GPU_TDP_W,
    INPUT_TOKENS,
    MODELS,
    OUTPUT_TOKENS,
    PREFILL_CHUNK_TOKENS,
    DemoModel,
)

H100_DENSE_BF16_FLOPS = 989e12  # NVIDIA H100 SXM datasheet, dense BF16
PREFILL_MFU = 0.5  # assumption: share of peak FLOP/s a prefill reaches
PREFILL_CAP_SHARE = 0.9  # assumption: prefill power above idle, share of the cap's
CONTEXT_SHARE = 0.5  # assumption: part of a decoding sequence's cost that grows with context
TOKEN_BUDGET = PREFILL_CHUNK_TOKENS  # tokens one step schedules (decodes, then prompt chunks)
PARAMETERS = {"llama-3.1-8b": 8.0e9, "llama-3.1-70b": 70.6e9}


def log_uniform_mean(lo: float, hi: float) -> float:
    """Mean of a log-uniform distribution on [lo, hi]."""
    return (hi - lo) / math.log(hi / lo)


def log_uniform_mean_square(lo: float, hi: float) -> float:
    """Mean of the square of a log-uniform distribution on [lo, hi]."""
    return (hi * hi - lo * lo) / (2.0 * math.log(hi / lo))


MEAN_INPUT_TOKENS = log_uniform_mean(*INPUT_TOKENS)
MEAN_OUTPUT_TOKENS = log_uniform_mean(*OUTPUT_TOKENS)
# The context of the average decoded token: input plus half the output, output-weighted.
MEAN_DECODE_CONTEXT = MEAN_INPUT_TOKENS + log_uniform_mean_square(*OUTPUT_TOKENS) / (
    2.0 * MEAN_OUTPUT_TOKENS
)


@dataclass(frozen=True)
class StepCosts:
    """A served model's step cost model (J and s per term) and its GPUs' limits."""

    model: str
    gpus: int
    max_num_seqs: int
    idle_w: float  # per GPU
    cap_w: float  # per GPU
    fixed_j: float  # F
    prefill_j_per_token: float  # a
    seq_j: float  # b
    seq_j_per_context_token: float  # c
    fixed_s: float
    prefill_s_per_token: float
    seq_s: float
    seq_s_per_context_token: float
    token_budget: int = TOKEN_BUDGET

    def step_energy_j(self, prefill_tokens: int, decoding: int, context_tokens: int) -> float:
        """Energy of a step: ``decoding`` sequences whose contexts sum to
        ``context_tokens``, and ``prefill_tokens`` prompt tokens."""
        return (
            self.fixed_j
            + self.prefill_j_per_token * prefill_tokens
            + self.seq_j * decoding
            + self.seq_j_per_context_token * context_tokens
        )

    def step_s(
        self, prefill_tokens: int, decoding: int, context_tokens: int, energy_j: float
    ) -> float:
        """Time of that step: its work, or longer where the power cap holds it back."""
        work_s = (
            self.fixed_s
            + self.prefill_s_per_token * prefill_tokens
            + self.seq_s * decoding
            + self.seq_s_per_context_token * context_tokens
        )
        return max(work_s, energy_j / (self.gpus * self.cap_w))

    def decode_energy_j(self, input_tokens: int, output_tokens: int) -> float:
        """A request's own decode energy: its ``output_tokens - 1`` decode steps, the
        k-th with a context of ``input_tokens + k``."""
        steps = output_tokens - 1
        return steps * (self.seq_j + self.seq_j_per_context_token * input_tokens) + (
            self.seq_j_per_context_token * steps * (steps + 1) / 2.0
        )


def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares intercept and slope."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    slope = sxy / sxx
    return mean_y - slope * mean_x, slope


def calibrate(model: DemoModel) -> StepCosts:
    """The step costs of ``model`` fitted to its measured speed and power (see above)."""
    gpus = model.gpus_per_replica
    prefill_s = 2.0 * PARAMETERS[model.name] / (gpus * H100_DENSE_BF16_FLOPS * PREFILL_MFU)
    prefill_w = GPU_IDLE_W + PREFILL_CAP_SHARE * (GPU_TDP_W - GPU_IDLE_W)
    prefill_j = gpus * prefill_w * prefill_s
    prompt_per_step = MEAN_INPUT_TOKENS / MEAN_OUTPUT_TOKENS  # per sequence in the batch
    energy: list[tuple[float, float]] = []
    time: list[tuple[float, float]] = []
    for batch, tokens_per_s, watts in model.measured:
        if batch > model.max_num_seqs:
            continue
        step_s = batch / tokens_per_s
        prompt = batch * prompt_per_step
        energy.append((batch, watts * step_s - prefill_j * prompt))
        time.append((batch, step_s - prefill_s * prompt))
    fixed_j, per_seq_j = _fit_line(energy)
    fixed_s, per_seq_s = _fit_line(time)
    return StepCosts(
        model=model.name,
        gpus=gpus,
        max_num_seqs=model.max_num_seqs,
        idle_w=GPU_IDLE_W,
        cap_w=GPU_TDP_W,
        fixed_j=fixed_j,
        prefill_j_per_token=prefill_j,
        seq_j=(1.0 - CONTEXT_SHARE) * per_seq_j,
        seq_j_per_context_token=CONTEXT_SHARE * per_seq_j / MEAN_DECODE_CONTEXT,
        fixed_s=fixed_s,
        prefill_s_per_token=prefill_s,
        seq_s=(1.0 - CONTEXT_SHARE) * per_seq_s,
        seq_s_per_context_token=CONTEXT_SHARE * per_seq_s / MEAN_DECODE_CONTEXT,
    )


COSTS = {m.name: calibrate(m) for m in MODELS}


def published_j_per_token(model: DemoModel) -> tuple[float, float]:
    """The range of J per output token ML.ENERGY v3.0 measured for ``model`` over all
    its batch sizes (GPU power / token throughput)."""
    values = [watts / tokens_per_s for _, tokens_per_s, watts in model.measured]
    return min(values), max(values)
