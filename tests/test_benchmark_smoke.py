"""Smoke test of the benchmark: `python -m benchmarks.run --quick` runs, and writes complete JSON, markdown and PNGs.

No performance thresholds: the figures depend on the machine; the test checks only that they exist and are positive.
"""

import io
import json
import os
import subprocess
import sys

import pytest

from benchmarks import report
from benchmarks.common import Progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELATION_FIGURES = ["storage_bytes", "tts_s", "ttr_checks_s", "ttr_no_checks_s", "tts_ratio_to_anchor",
                    "ttr_checks_ratio_to_anchor", "ttr_no_checks_ratio_to_anchor", "storage_ratio_to_baseline"]
TIMINGS = ["tts", "ttr_checks", "ttr_no_checks"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench")
    completed = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out),
                                "--work-dir", str(out)],
                               cwd=ROOT, capture_output=True, text=True, timeout=900,
                               env={**os.environ, "MMLIB_PROGRESS": "1"})
    return out, completed


def test_quick_benchmark_exits_cleanly(quick_run):
    _, completed = quick_run
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "## Targets" in completed.stdout
    assert "U1: timing saves" in completed.stderr


def test_quick_benchmark_json_has_every_figure(quick_run):
    out, _ = quick_run
    with open(out / "benchmark-quick.json", encoding="utf-8") as handle:
        results = json.load(handle)
    assert {"meta", "models", "provenance", "targets", "plots"} <= results.keys()
    assert results["models"]
    for model in results["models"].values():
        _check_relations(model["relations"])
        _check_relations(model["user_model"]["relations"])
        assert model["user_model"]["code_file"].endswith(".py") and model["user_model"]["class"]
        fresh = model["user_model"]["fresh_process"]
        assert fresh["relation"] == "U3" and fresh["anchor"]["recovered_equal"] is True
        assert 0 < fresh["anchor"]["recover_s"] < fresh["anchor"]["process_s"]
        assert set(fresh["approaches"]) == set(model["relations"]["U3"]["approaches"])
        for entry in fresh["approaches"].values():
            assert 0 < entry["recover_s"] < entry["process_s"], entry
            assert entry["recover_ratio_to_anchor"] > 0 and entry["process_ratio_to_anchor"] > 0
            assert entry["recovered_equal"] is True
        chain = model["chain"]
        assert len(chain["anchor"]["ttr_s"]) == chain["length"] + 1
        assert all(p90 >= median for median, p90 in zip(chain["anchor"]["ttr_s"], chain["anchor"]["ttr_p90_s"]))
        assert chain["approaches"]
        for entry in chain["approaches"].values():
            assert len(entry["ttr_checks_s"]) == len(entry["ttr_checks_p90_s"]) == chain["length"] + 1
            assert all(seconds > 0 for seconds in entry["ttr_checks_s"])
            assert all(p90 >= median for median, p90 in zip(entry["ttr_checks_s"], entry["ttr_checks_p90_s"]))
            assert all(value > 0 for value in entry["ttr_ratio_to_anchor_p90"])
            assert entry["growth_last_over_first"] > 0 and entry["recovered_equal"] is True
            assert entry["slowest_update_over_snapshot"] == max(entry["ttr_checks_s"][1:]) / entry["ttr_checks_s"][0]
    assert len(results["targets"]) == len(report.TARGETS)
    assert results["provenance"]["available"] is True
    for model in results["provenance"]["models"].values():
        assert all(version["storage_bytes"] > 0 and version["ttr_checks_s"] > 0 for version in model["versions"])


def _check_relations(relations: dict) -> None:
    """U1-U3 each with anchors and approaches, every timing figure with its median and p90, every ratio with both."""
    assert set(relations) == {"U1", "U2", "U3"}
    base = relations["U1"]
    assert 0 < base["anchor_durable"]["tts_s"] <= base["anchor_durable"]["tts_p90_s"]
    assert base["approaches"]["baseline"]["tts_ratio_to_durable_anchor"] > 0
    assert base["approaches"]["baseline"]["tts_ratio_to_durable_anchor_p90"] > 0
    assert "baseline_scratch" in base["approaches"]
    for relation in relations.values():
        anchor = relation["anchor"]
        assert 0 < anchor["tts_s"] <= anchor["tts_p90_s"] and 0 < anchor["ttr_s"] <= anchor["ttr_p90_s"]
        assert relation["approaches"]
        for entry in relation["approaches"].values():
            assert all(entry[figure] > 0 for figure in RELATION_FIGURES), entry
            for timing in TIMINGS:
                assert entry[f"{timing}_s"] <= entry[f"{timing}_p90_s"], entry
                assert entry[f"{timing}_ratio_to_anchor_p90"] > 0, entry
            assert entry["recovered_equal"] is True


def test_quick_benchmark_writes_markdown_and_plots(quick_run):
    out, _ = quick_run
    markdown = (out / "benchmark-quick.md").read_text(encoding="utf-8")
    assert "| model |" in markdown and " / " in markdown
    assert "## U1-U3 for a user's model" in markdown and "### A recovery in a fresh process" in markdown
    for name in ("storage-quick.png", "time_ratios-quick.png", "chain_ttr-quick.png"):
        path = out / name
        assert path.stat().st_size > 0
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [name for name in os.listdir(out) if name.startswith("mmlib-bench-")], "stores were not removed"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_shown_on_a_terminal_and_quiet_in_a_pipe(monkeypatch):
    monkeypatch.delenv("MMLIB_PROGRESS", raising=False)
    piped, terminal = io.StringIO(), _Terminal()
    Progress(piped)("step one")
    Progress(terminal)("step one")
    assert piped.getvalue() == "" and "step one" in terminal.getvalue()
    monkeypatch.setenv("MMLIB_PROGRESS", "1")
    Progress(piped)("step two")
    assert "step two" in piped.getvalue()
