"""Smoke test of `python -m benchmarks.memory` at a tiny size: every operation is measured in a fresh process and
the report holds every figure and ratio, and the instrumented runs their steps (no thresholds: the figures depend
on the machine and mean little at this size)."""

import json
import os
import subprocess
import sys

from benchmarks import memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_run_reports_every_figure(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--size-mb", "8", "--repeat", "1",
                                "--phases", "all", "--out", str(tmp_path), "--work-dir", str(tmp_path)],
                               cwd=ROOT, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "MMLIB_PROGRESS": "1"})
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "run 1 of 1" in completed.stderr
    results = json.loads((tmp_path / "memory.json").read_text())
    model_bytes = results["meta"]["model_bytes"]
    assert 7 * 2 ** 20 < model_bytes < 9 * 2 ** 20
    assert results["prepared"]["update_bytes"] < results["prepared"]["snapshot_bytes"]
    assert set(results["operations"]) == set(memory.OPERATIONS)
    for key, summary in results["operations"].items():
        run, = summary["runs"]
        assert run["peak_bytes"] is not None and run["sampled_peak_bytes"] > 0, key
        assert summary["ratio"]["median"] == summary["peak_bytes"]["median"] / model_bytes, key
        assert (run["model_rss"] is not None) == memory.OPERATIONS[key].is_save, key
        assert summary["met"] is None if summary["target"] is None else isinstance(summary["met"], bool), key
    assert set(results["phases"]) == {key for key, operation in memory.OPERATIONS.items() if operation.target}
    for key, run in results["phases"].items():
        steps = {step["step"]: step for step in run["phases"]["steps"]}
        assert steps and all(call["end_ms"] >= call["start_ms"] for call in run["phases"]["calls"]), key
        expected = "AbstractSaveService._persist_model" if memory.OPERATIONS[key].is_save else "rebuild"
        assert steps[expected]["calls"] == 1, key
    markdown = (tmp_path / "memory.md").read_text()
    assert markdown.strip() in completed.stdout
    for operation in memory.OPERATIONS.values():
        assert f"| {operation.label} |" in markdown
    assert markdown.count("### Where the peak of") == 4
