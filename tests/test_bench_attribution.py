"""The attribution and accuracy benchmarks: what they measure is what they say."""

from __future__ import annotations

import json

import pytest

from footprint.bench.accuracy_truth import truth_j
from footprint.bench.attribution import resolve_cost
from footprint.cli import main


def test_attribution_bench_resolves_every_span_at_the_stated_concurrency():
    result = resolve_cost(concurrent=300, spans=3000)
    assert result["concurrent"] == 300 and result["spans"] == 3000
    assert result["us_per_span"] > 0


def test_attribution_bench_cli_prints_one_json_object(capsys):
    main(["bench", "attribution", "--json", "--spans", "1000"])
    result = json.loads(capsys.readouterr().out)
    assert [r["concurrent"] for r in result["runs"]] == [100, 1000, 4000]
    assert result["runs"][2]["spans"] == 20_000  # at least 5 × the concurrency


def test_accuracy_truth_splits_each_stretch_among_the_spans_running():
    def energy_j(a, b):  # 100 W flat
        return 100.0 * (b - a)

    truth = truth_j([(0.0, 2.0), (1.0, 3.0), (1.5, 1.5)], energy_j)
    assert truth == pytest.approx([150.0, 150.0, 0.0])


def test_accuracy_bench_rejects_partial_writes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "accuracy", "--write", "--scale", "0.5"])
    assert exit_info.value.code == 2
    assert "--write records the full benchmark" in capsys.readouterr().err
