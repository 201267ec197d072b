"""Smoke test of `python -m benchmarks.cold_process`: it builds its environment, runs every contender in fresh
processes and writes a median and p90 for each (no thresholds: the figures depend on the machine)."""

import json
import os
import subprocess
import sys

from benchmarks import cold_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_round_of_every_contender(tmp_path):
    out = tmp_path / "cold.json"
    completed = subprocess.run([sys.executable, "-m", "benchmarks.cold_process", "--repeats", "1", "--distributions",
                                "12", "--model", "resnet18", "--work-dir", str(tmp_path), "--out", str(out)],
                               cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads(out.read_text())
    assert set(results["contenders"]) == {cold_process.RAW_LOAD, cold_process.RECOVER, cold_process.RECOVER_EMPTY,
                                          cold_process.TORCH_SAVE, cold_process.SAVE, cold_process.SAVE_EMPTY}
    assert all(entry["median_s"] > 0 and entry["p90_s"] >= entry["median_s"] and len(entry["runs_s"]) == 1
               for entry in results["contenders"].values())
    assert all(0 <= entry["gc_runs_s"][0] <= entry["runs_s"][0] for entry in results["contenders"].values())
    assert results["distributions"] >= 12
    assert "| recover (cache kept) |" in completed.stdout


def test_generated_distributions_are_what_importlib_reads(tmp_path):
    site = tmp_path / "site"
    for index in range(8):
        cold_process._write_distribution(str(site), index)
    completed = subprocess.run([sys.executable, "-c", "import importlib.metadata as m, json; print(json.dumps("
                                "{k: v for k, v in m.packages_distributions().items() if k[0] in 'fhs'}))"],
                               env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, check=True)
    provided = json.loads(completed.stdout)
    assert provided["fake_lib_0"] == ["fake-lib-0"] and provided["faketools1"] == ["Fake.Tools1"]
    assert provided["hlp2"] == ["py2-helper"] and provided["single3"] == ["single3"]


def test_the_timed_call_reports_the_garbage_collections_that_ran_in_it():
    def collect_twice() -> None:
        import gc
        gc.collect()
        gc.collect()

    timed = cold_process._timed(collect_twice, profile=False)
    assert 0 < timed["gc_seconds"] <= timed["seconds"]
