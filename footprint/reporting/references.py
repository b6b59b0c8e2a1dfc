"""Published figures a report sets its per-1M-token figures beside, for the models it knows.

Hosted-API prices per 1M input and per 1M output tokens of Llama 3.1 Instruct 8B and 70B,
and the GPU energy per output token that The ML.ENERGY Benchmark measured for them on
H100s: the models ``footprint demo`` serves. A report shows them for a model whose name,
lowercased and without an organisation prefix (``meta-llama/``), a ``meta-`` prefix or an
``-instruct`` suffix, is one of these names; other models have none. Every figure is typed
from its source, quoted with the commit or date it was read at.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# pydantic/genai-prices, prices/providers/*.yml at commit
# 47df840a5ab10bbcffb8e5ac01b9899032245d1b (2026-08-21), $ per 1M tokens (input / output).
# 8B: OpenRouter 0.02/0.03, Novita 0.05/0.05, nscale 0.06/0.06, Groq 0.05/0.08, Nebius
# 0.03/0.09, Avian 0.10/0.10, Cerebras 0.10/0.10, OVHcloud 0.11/0.11, Together 0.18/0.18,
# Fireworks 0.20/0.20, SambaNova 0.10/0.20, Amazon Bedrock 0.22/0.22.
# 70B: OpenRouter 0.10/0.28, Novita 0.34/0.39, Avian 0.45/0.45, Amazon Bedrock 0.72/0.72,
# Groq 0.59/0.79, Together 0.88/0.88.
PRICES_SOURCE = (
    "Hosted API list prices of Llama 3.1 Instruct, pydantic/genai-prices "
    "prices/providers/*.yml at commit 47df840a5ab10bbcffb8e5ac01b9899032245d1b (2026-08-21): "
    "https://github.com/pydantic/genai-prices/tree/"
    "47df840a5ab10bbcffb8e5ac01b9899032245d1b/prices/providers"
)
# GPU energy per output token (whole requests, prefill included) over every batch size
# measured: Llama 3.1 8B on 1 H100 (batch 16-768: 0.263 J at 16 down to 0.070 J at 512),
# 70B on 4 H100s (batch 16-1024: 2.091 J down to 0.373 J).
ENERGY_SOURCE = (
    'The ML.ENERGY Benchmark v3.0 (vLLM 0.11.1, H100), figure "Energy per output token vs. '
    'batch size" of J.-W. Chung, "LLM Inference Energy: A Longitudinal Analysis", '
    "ML.ENERGY blog, 2026-02-09: "
    "https://ml.energy/blog/measurement/energy/llm-inference-energy-a-longitudinal-analysis"
)


class Published(NamedTuple):
    """One model's published figures: ranges (low, high) over the providers or batch sizes."""

    input_usd_per_1m: tuple[float, float]
    output_usd_per_1m: tuple[float, float]
    providers: int
    output_j_per_token: tuple[float, float]


PUBLISHED = {
    "llama-3.1-8b": Published((0.02, 0.22), (0.03, 0.22), 12, (0.070, 0.263)),
    "llama-3.1-70b": Published((0.10, 0.88), (0.28, 0.88), 6, (0.373, 2.091)),
}


def reference_name(model: str) -> str:
    """The name a model is looked up by: lowercased, without ``org/``, ``meta-`` or
    ``-instruct``."""
    name = model.lower().rsplit("/", 1)[-1]
    name = name.removeprefix("meta-")
    return name.removesuffix("-instruct")


def references(models: list[str]) -> list[dict[str, Any]]:
    """The published figures of the ``models`` that have some, in their order: per model
    the price ranges per 1M input and output tokens and the energy per 1M output tokens
    (J), with their sources."""
    out = []
    for i, model in enumerate(models):
        found = PUBLISHED.get(reference_name(model))
        if found is None:
            continue
        low_j, high_j = found.output_j_per_token
        out.append(
            {
                "model": model,
                "index": i,
                "input_usd_per_1m": {
                    "low": found.input_usd_per_1m[0],
                    "high": found.input_usd_per_1m[1],
                },
                "output_usd_per_1m": {
                    "low": found.output_usd_per_1m[0],
                    "high": found.output_usd_per_1m[1],
                },
                "providers": found.providers,
                "output_energy_j_per_1m": {"low": low_j * 1e6, "high": high_j * 1e6},
                "prices_source": PRICES_SOURCE,
                "energy_source": ENERGY_SOURCE,
            }
        )
    return out
