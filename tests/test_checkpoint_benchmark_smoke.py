"""Smoke test of the checkpoint benchmark: `python -m benchmarks.checkpoints --quick` runs, checks what it measures
and writes its JSON and plot. No performance thresholds: the figures depend on the machine."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_checkpoint_benchmark_runs_and_checks_itself(tmp_path):
    pytest.importorskip("matplotlib")
    completed = subprocess.run([sys.executable, "-m", "benchmarks.checkpoints", "--quick", "--workloads", "gpt",
                                "--out", str(tmp_path), "--work-dir", str(tmp_path)],
                               cwd=ROOT, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "MMLIB_PROGRESS": "1"})
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "checkpoint at step" in completed.stderr
    with open(tmp_path / "checkpoints-quick.json") as handle:
        results = json.load(handle)
    checks = results["workloads"]["gpt"]["checks"]
    assert checks["runs_trained_identically"] and checks["newest_checkpoint_resumes_like_newest_file"]
    assert checks["kept_steps_mmlib"] == checks["kept_steps_files"] == checks["kept_steps_background"]
    with open(tmp_path / "checkpoints-quick.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "GPT-2-style LM" in completed.stdout and "time per checkpoint" in completed.stdout
