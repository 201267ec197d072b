"""The `mmlib` command, run as a real process against an embedded store and against MongoDB + GridFS.

Each process start imports torch (seconds), so each store gets five subprocess calls (three of them in
parallel); the other subcommands, output formats and error paths are checked in-process through `main(argv)`.
"""

import json
import os
import subprocess
import sys
import types

from safetensors.torch import load_file

import pytest

import mmlib.cli
import mmlib.save
from mmlib import maintenance
from mmlib.errors import AmbiguousModelIdError
from mmlib.cli import EXIT_OK, EXIT_PROBLEMS, EXIT_UNAVAILABLE, EXIT_USAGE
from mmlib.persistence import open_store
from mmlib.persistence.base import BLOB
from mmlib.schema.model_info import MODEL_INFO, ModelInfo
from mmlib.schema.store_format import check_store_format
from mmlib.util.hash import state_dict_hash
from save_helpers import perturb, run_cli as _run, save_info
from tiny_models import TinyNet

_SUBPROCESS_TIMEOUT_S = 120


def _populate(location: str) -> dict:
    """Save root -> child -> grandchild and root -> sibling, plus an update of the grandchild; returns
    {name: (model id, state dict hash)}."""
    store = open_store(location)
    baseline = mmlib.save.BaselineSaveService(*store)
    model, saved = TinyNet(), {}

    def save(name, service, base=None):
        base_id = saved[base][0] if base else None
        saved[name] = (service.save_model(save_info(model, base_model_id=base_id)), state_dict_hash(model.state_dict()))

    save("root", baseline)
    save("child", baseline, "root")
    save("grandchild", baseline, "child")
    perturb(model)
    save("sibling", baseline, "root")
    save("update", mmlib.save.WeightUpdateSaveService(*store), "grandchild")
    return saved


def _start(location: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mmlib", "--store", location, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, expected_code: int = EXIT_OK) -> str:
    stdout, stderr = process.communicate(timeout=_SUBPROCESS_TIMEOUT_S)
    assert process.returncode == expected_code, f"{process.args}: exit {process.returncode}\n{stderr}"
    assert "Traceback" not in stderr
    return stdout


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    location = str(tmp_path / "store")
    _populate(location)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = subprocess.run([sys.executable, "-m", "mmlib", "--store", location, "ls"], stdout=write_end,
                                 stderr=subprocess.PIPE, text=True, timeout=_SUBPROCESS_TIMEOUT_S)
    finally:
        os.close(write_end)
    assert (process.returncode, process.stderr) == (EXIT_OK, "")


def test_the_command_in_a_real_process(location, tmp_path, corrupt_blob):
    saved = _populate(location)
    store = open_store(location)
    orphan = store.file_pers_service.save_bytes(b"left behind", "orphan.bin").reference_id.split("/")[0]
    root_id, grandchild_id = saved["root"][0], saved["grandchild"][0]
    output = tmp_path / "weights.safetensors"

    ls, show, recover, tree, dry_run = (
        _start(location, "ls", "--json"), _start(location, "show", grandchild_id, "--json"),
        _start(location, "recover", grandchild_id, "-o", str(output)), _start(location, "tree", "--json"),
        _start(location, "gc", "--dry-run", "--json", "--grace", "0"))
    assert [root["model_id"] for root in json.loads(_finish(tree))] == [root_id]
    preview = json.loads(_finish(dry_run))
    assert preview["dry_run"] and preview["blobs"] == [orphan]
    listed = json.loads(_finish(ls))
    assert [m["model_id"] for m in listed] == [model_id for model_id, _ in reversed(saved.values())]
    assert all(m["size"] > 0 for m in listed)
    details = json.loads(_finish(show))
    assert [v["model_id"] for v in details["lineage"]] == [grandchild_id, saved["child"][0], root_id]
    assert details["sizes"]["recover_info"]["parameters"] > 0 and details["environment"]["pytorch_version"]
    assert grandchild_id in _finish(recover)
    assert state_dict_hash(load_file(str(output))) == saved["grandchild"][1]

    removed = json.loads(_finish(_start(location, "gc", "--json", "--grace", "0")))
    assert not removed["dry_run"] and removed["blobs"] == [orphan] and removed["documents"] == []
    assert not store.file_pers_service.blob_exists(orphan)
    assert maintenance.verify(store) == []

    digest, = _blobs(store, saved["sibling"][0]) - _blobs(store, root_id)
    corrupt_blob(store.file_pers_service, digest)
    report = json.loads(_finish(_start(location, "verify", "--json"), EXIT_PROBLEMS))
    assert report["checked"] == [model_id for model_id, _ in saved.values()]
    assert [(p["model_id"], p["item"]) for p in report["problems"]] == [(saved["sibling"][0], f"blob {digest}")]


def test_tree_gc_and_verify_in_process(location, capsys):
    saved = _populate(location)
    ids = {name: model_id for name, (model_id, _) in saved.items()}
    orphan = open_store(location).file_pers_service.save_bytes(b"left behind", "o.bin").reference_id.split("/")[0]

    code, out, _ = _run(capsys, "--store", location, "tree", "--json")
    roots = json.loads(out)
    assert code == EXIT_OK and [root["model_id"] for root in roots] == [ids["root"]]
    assert [child["model_id"] for child in roots[0]["children"]] == [ids["child"], ids["sibling"]]
    code, out, _ = _run(capsys, "tree", "--store", location)
    lines = out.splitlines()
    short = {name: model_id[:maintenance.ABBREVIATED] for name, model_id in ids.items()}
    assert lines[0].startswith(f"{short['root']}  ") and lines[1].startswith(f"|-- {short['child']}  ")
    assert lines[2].startswith(f"|   `-- {short['grandchild']}") and lines[-1].startswith(f"`-- {short['sibling']}")

    code, out, _ = _run(capsys, "--store", location, "gc", "--dry-run", "--json", "--grace", "0")
    assert code == EXIT_OK and json.loads(out)["blobs"] == [orphan] and json.loads(out)["dry_run"]
    code, out, _ = _run(capsys, "--store", location, "gc", "--dry-run", "--grace", "0")
    assert f"would remove blob {orphan}" in out and "would remove 0 document(s), 1 blob(s)" in out
    assert open_store(location).file_pers_service.blob_exists(orphan)

    code, out, _ = _run(capsys, "--store", location, "verify", ids["root"], ids["sibling"])
    assert code == EXIT_OK and "2 model(s) verified" in out


def test_tables_are_aligned_for_a_terminal(tmp_path, capsys):
    location = str(tmp_path / "store")
    saved = _populate(location)
    code, out, _ = _run(capsys, "--store", location, "ls")
    header, *rows = out.splitlines()
    assert code == EXIT_OK and header.split() == ["ID", "TYPE", "BASE", "CREATED", "(UTC)", "SIZE"]
    newest = saved[list(saved)[-1]][0]
    assert len(rows) == len(saved) and rows[0].startswith(f"{newest[:maintenance.ABBREVIATED]}  ")
    assert {row.index(" full_model") if "full_model" in row else header.index(" TYPE") for row in rows} == \
        {header.index(" TYPE")}
    assert len({len(row) for row in rows}) == 1 and header.index("SIZE") + 4 == len(rows[0])

    code, out, _ = _run(capsys, "--store", location, "show", saved["grandchild"][0])
    for section in ("MODEL", "ENVIRONMENT", "SIZE BREAKDOWN", "LINEAGE"):
        assert any(line.startswith(section) for line in out.splitlines())
    assert f"  {saved['root'][0]}" in out and "parameters" in out and "pytorch_version" in out


def test_errors_are_one_line_with_the_documented_exit_code(tmp_path, capsys, monkeypatch):
    location = str(tmp_path / "store")
    saved = _populate(location)
    monkeypatch.delenv("MMLIB_STORE", raising=False)
    cases = [
        (["ls"], EXIT_USAGE, "no store given"),
        (["--store", location, "show", "no-such-id"], EXIT_USAGE, "mmlib ls"),
        (["--store", location, "verify", "no-such-id"], EXIT_USAGE, "no-such-id"),
        (["--store", location, "recover", saved["root"][0], "-o", str(tmp_path / "missing" / "w.safetensors")],
         EXIT_USAGE, "existing directory"),
        (["--store", str(tmp_path / "no-store"), "ls"], EXIT_UNAVAILABLE, "does not exist"),
        (["--store", "s3://bucket", "ls"], EXIT_UNAVAILABLE, "mongodb://"),
    ]
    for argv, expected_code, message in cases:
        code, out, err = _run(capsys, *argv)
        assert (code, out) == (expected_code, ""), argv
        assert err.startswith("mmlib: error: ") and message in err and err.count("\n") == 1, err
    code, _, err = _run(capsys, "--store", location, "frobnicate")
    assert code == EXIT_USAGE and "invalid choice" in err
    assert not (tmp_path / "no-store").exists()


def test_integrity_errors_exit_with_1(tmp_path, capsys, corrupt_blob):
    location = str(tmp_path / "store")
    saved = _populate(location)
    store = open_store(location)
    digest, = _blobs(store, saved["sibling"][0]) - _blobs(store, saved["root"][0])
    corrupt_blob(store.file_pers_service, digest)
    code, out, err = _run(capsys, "--store", location, "recover", saved["sibling"][0], "-o", str(tmp_path / "w"))
    assert code == EXIT_PROBLEMS and digest in err and not (tmp_path / "w").exists()
    code, out, _ = _run(capsys, "--store", location, "verify")
    assert code == EXIT_PROBLEMS and f"model {saved['sibling'][0]}: blob {digest}: " in out


def test_store_from_the_environment_and_debug_logging(tmp_path, capsys, monkeypatch):
    location = str(tmp_path / "store")
    saved = _populate(location)
    monkeypatch.setenv("MMLIB_STORE", location)
    code, out, err = _run(capsys, "ls", "-v")
    assert code == EXIT_OK and saved["root"][0][:12] in out and "mmlib: DEBUG: opened store" in err
    code, out, err = _run(capsys, "ls")
    assert code == EXIT_OK and err == ""


def test_help_documents_exit_codes_and_examples(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == EXIT_OK and "exit codes:" in out and "examples:" in out and "mongodb://" in out
    for command in ("ls", "show", "tree", "recover", "verify", "gc", "bench"):
        assert command in out


def test_bench_runs_the_benchmark_main_or_says_how_to_get_it(capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("benchmarks.run")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "benchmarks.run", fake)
    assert _run(capsys, "bench", "--quick")[0] == EXIT_OK and calls == [["--quick"]]
    monkeypatch.setattr(mmlib.cli, "_source_checkout", lambda: None)
    code, _, err = _run(capsys, "bench")
    assert code == EXIT_USAGE and "ships with mmlib's source" in err and "setup.sh" in err


def test_the_console_script_finds_the_benchmark_from_any_directory(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "mmlib")
    command = [script] if os.path.isfile(script) else [sys.executable, "-m", "mmlib"]
    process = subprocess.run([*command, "bench", "--help"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=_SUBPROCESS_TIMEOUT_S)
    assert process.returncode == EXIT_OK and "--quick" in process.stdout, process.stderr


def _blobs(store, model_id: str) -> set[str]:
    """Digests of the blobs a model references."""
    items = ModelInfo.load_placeholder(model_id).stored_items(store.dict_pers_service)
    return {item.item_id for item in items if item.kind == BLOB}


def test_unique_id_prefixes_name_models_as_in_git(tmp_path, capsys):
    location = str(tmp_path / "store")
    saved = _populate(location)
    grandchild = saved["grandchild"][0]
    code, out, _ = _run(capsys, "--store", location, "show", grandchild[:6], "--json")
    assert code == EXIT_OK and json.loads(out)["model_id"] == grandchild
    code, out, _ = _run(capsys, "--store", location, "verify", grandchild[:8])
    assert code == EXIT_OK and "1 model(s) verified" in out
    output = tmp_path / "weights.safetensors"
    code, out, _ = _run(capsys, "--store", location, "recover", grandchild[:10], "-o", str(output))
    assert code == EXIT_OK and grandchild in out
    code, _, err = _run(capsys, "--store", location, "show", grandchild[:3])
    assert code == EXIT_USAGE and "no model with id" in err
    code, _, err = _run(capsys, "--store", location, "show", "ffff" if not grandchild.startswith("ffff") else "0000")
    assert code == EXIT_USAGE


def test_a_prefix_of_several_ids_is_ambiguous(tmp_path, capsys):
    location = str(tmp_path / "store")
    store = open_store(location)
    twins = ["abcd1" + "0" * 59, "abcd2" + "0" * 59]
    check_store_format(store.dict_pers_service, record=True)
    for model_id in twins:
        store.dict_pers_service.save_dict({"id": model_id}, MODEL_INFO)
    with pytest.raises(AmbiguousModelIdError, match="give more"):
        maintenance.resolve_model_id(store, "abcd")
    assert [maintenance.resolve_model_id(store, prefix) for prefix in ("abcd1", "abcd2")] == twins
    code, _, err = _run(capsys, "--store", location, "rm", "abcd")
    assert code == EXIT_USAGE and "2 model ids" in err
    assert maintenance.abbreviated(twins) == {model_id: model_id[:12] for model_id in twins}
    assert maintenance.abbreviated(["a" * 20 + "1", "a" * 20 + "2"]) == {"a" * 20 + "1": "a" * 20 + "1",
                                                                      "a" * 20 + "2": "a" * 20 + "2"}


def test_rm_refuses_a_model_others_derive_from_unless_asked(tmp_path, capsys):
    location = str(tmp_path / "store")
    saved = _populate(location)
    ids = {name: model_id for name, (model_id, _) in saved.items()}
    store = open_store(location)
    code, _, err = _run(capsys, "--store", location, "rm", ids["child"][:8])
    assert code == EXIT_PROBLEMS and "derive from model" in err and "--with-descendants" in err
    assert maintenance.all_model_ids(store) == list(ids.values())
    code, out, _ = _run(capsys, "--store", location, "rm", ids["sibling"])
    assert code == EXIT_OK and f"removed model {ids['sibling']}" in out and "mmlib gc" in out
    code, out, _ = _run(capsys, "--store", location, "rm", ids["child"], "--with-descendants", "--json")
    removed = json.loads(out)["removed"]
    assert code == EXIT_OK and removed[-1] == ids["child"] and set(removed) == set(ids.values()) - {
        ids["root"], ids["sibling"]}
    assert maintenance.all_model_ids(store) == [ids["root"]]
    report = maintenance.collect_garbage(store, grace_seconds=0)
    assert report.blobs and maintenance.verify(store) == []
    assert maintenance.remove_model(store, ids["root"]) == [ids["root"]] and maintenance.all_model_ids(store) == []


def test_verify_shows_progress_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    location = str(tmp_path / "store")
    saved = _populate(location)
    code, _, err = _run(capsys, "--store", location, "verify")
    assert code == EXIT_OK and err == ""
    monkeypatch.setattr(mmlib.cli, "_stderr_is_terminal", lambda: True)
    code, _, err = _run(capsys, "--store", location, "verify")
    assert code == EXIT_OK and f"verifying model 1 of {len(saved)}" in err
    code, _, err = _run(capsys, "--store", location, "verify", "--json")
    assert code == EXIT_OK and err == ""


_READING_COMMANDS = [["ls"], ["show", "abc"], ["tree"], ["verify"], ["recover", "abc", "-o", "w.safetensors"],
                     ["gc", "--dry-run"], ["gc"], ["rm", "abc"]]


@pytest.mark.parametrize("command", _READING_COMMANDS, ids=lambda command: command[0] + str(len(command)))
def test_a_directory_without_a_store_is_named_and_left_as_it_was(tmp_path, capsys, command):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"not a store")
    code, out, err = _run(capsys, "--store", str(photos), *command)
    assert (code, out) == (EXIT_UNAVAILABLE, "") and err.count("\n") == 1
    assert f"no mmlib store at {photos} " in err
    assert os.listdir(photos) == ["cat.jpg"]


@pytest.mark.parametrize("command", _READING_COMMANDS, ids=lambda command: command[0] + str(len(command)))
def test_a_mistyped_blob_directory_is_named_and_not_created(tmp_path, capsys, command):
    location = str(tmp_path / "store")
    _populate(location)
    typo = tmp_path / "shared-blobz"
    code, out, err = _run(capsys, "--store", location, "--blob-dir", str(typo), *command)
    assert (code, out) == (EXIT_UNAVAILABLE, "") and err.count("\n") == 1
    assert f"blob directory {typo} does not exist" in err
    assert not typo.exists()


def test_a_store_path_that_is_a_file_is_named_as_a_file(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a store")
    code, out, err = _run(capsys, "--store", str(notes), "ls")
    assert (code, out) == (EXIT_UNAVAILABLE, "") and err.count("\n") == 1
    assert f"{notes} is a file, not a store directory" in err
