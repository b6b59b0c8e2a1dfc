"""The command line: JSON contracts and exit code 2 with one line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from footprint.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "footprint.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--queries", "0"],
        ["demo", "--no-such-option"],
        ["devices", "--sensor", "rocm"],
        ["demo", "--db", "mysql://x/y"],
        ["nonsense"],
    ],
)
def test_bad_input_exits_2_with_one_line(args, capsys):
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("footprint: error: ")
    assert err.count("\n") == 1


def test_devices_json_without_gpu_says_so(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    main(["devices", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["gpus"] == []
    assert "pynvml" in out["gpu_note"] or "NVML" in out["gpu_note"]


def test_devices_json_lists_simulated_gpus(capsys):
    main(["devices", "--json", "--sensor", "simulated:gpus=3"])
    out = json.loads(capsys.readouterr().out)
    assert [g["energy_method"] for g in out["gpus"]] == ["simulated"] * 3
    assert len({g["uuid"] for g in out["gpus"]}) == 3


def test_demo_json_conserves_energy_and_covers_models(tmp_path):
    db = tmp_path / "demo.db"
    done = run_cli("demo", "--db", str(db), "--queries", "24", "--seed", "3", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["queries"] == 24
    assert set(out["models"]) == {"llama-3.1-8b", "llama-3.1-70b"}
    assert sum(m["queries"] for m in out["models"].values()) == 24
    assert out["attributed_energy_j"] > 0 and out["idle_energy_j"] >= 0
    total = out["attributed_energy_j"] + out["idle_energy_j"]
    assert out["measured_energy_j"] == pytest.approx(total, rel=1e-9)
    # 70B runs on four GPUs with more work per token: it must cost more per token than 8B.
    per_token = {k: m["j_per_output_token"] for k, m in out["models"].items()}
    assert per_token["llama-3.1-70b"] > per_token["llama-3.1-8b"]
    assert out["gpus"]["held_gpu_hours"] > out["gpus"]["busy_gpu_hours"] > 0
