"""Damage is contained: one damaged model document is named and marked, every healthy model is still listed,
verify goes on, gc refuses until the store is repaired; and the small things the command says (rm, gc, verify's
advice, short prefixes, --version)."""

import contextlib
import json
import os
import sqlite3

import pytest

import mmlib
from mmlib import maintenance
from mmlib.cli import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from mmlib.errors import IntegrityError
from mmlib.persistence import open_store
from mmlib.persistence.base import BLOB
from mmlib.save import BaselineSaveService
from mmlib.schema.model_info import CREATED, DERIVED_FROM, MODEL_INFO, STORE_TYPE, ModelInfo
from save_helpers import forge_record, perturb, promptly, run_cli, save_info, save_update_chain
from store_helpers import corrupt_blob
from tiny_models import TinyNet

_DAMAGED = "is damaged (.*); restore it from a backup or remove the model with `mmlib rm`"


@pytest.fixture
def two_models(tmp_path):
    """A store with a root model and one derived from it: (location, store, root id, child id)."""
    location = str(tmp_path / "store")
    store = open_store(location)
    service = BaselineSaveService(*store)
    model = TinyNet()
    root = service.save_model(save_info(model))
    perturb(model)
    child = service.save_model(save_info(model, base_model_id=root))
    return location, store, root, child


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `main` in this process; returns (exit code, stdout, stderr), stderr one line at most."""
    code, out, err = run_cli(capsys, *argv)
    assert "Traceback" not in err and err.count("\n") <= 1, err
    return code, out, err


def _write_body(location: str, model_id: str, body: str) -> None:
    """Replace the stored JSON of a model document with `body`, as a broken disk or editor might."""
    with contextlib.closing(sqlite3.connect(os.path.join(location, "metadata.sqlite"))) as connection:
        connection.execute("UPDATE documents SET body = ? WHERE type = ? AND id = ?", (body, MODEL_INFO, model_id))
        connection.commit()


def _listed_ids(out: str) -> list[str]:
    """The model ids (full) of a JSON listing, damaged ones included."""
    return [entry["model_id"] for entry in json.loads(out)]


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '"a string"'], ids=["malformed", "list", "string"])
def test_malformed_json_is_named_and_ls_tree_show_verify_go_on(two_models, capsys, body):
    location, store, root, child = two_models
    _write_body(location, child, body)
    with pytest.raises(IntegrityError, match=f"document {MODEL_INFO} {child} {_DAMAGED}"):
        store.dict_pers_service.recover_dict(child, MODEL_INFO)
    with pytest.raises(IntegrityError, match=f"document {MODEL_INFO} {child} {_DAMAGED}"):
        maintenance.version(store, child)

    code, out, err = _run(capsys, "--store", location, "ls")
    assert code == EXIT_PROBLEMS and "1 of 2 model(s) damaged" in err
    assert f"{root[:12]}  full_model" in out and f"{child[:12]}  DAMAGED" in out
    assert f"damaged model {child}: document {MODEL_INFO} {child} is damaged" in out
    code, out, _ = _run(capsys, "--store", location, "ls", "--json")
    entries = json.loads(out)
    assert code == EXIT_PROBLEMS and _listed_ids(out) == [root, child]
    assert entries[0]["size"] > 0 and entries[1]["size"] is None and "is damaged" in entries[1]["damaged"]
    survey = maintenance.survey(store)
    assert [m.model_id for m in survey.models] == [root] and [d.model_id for d in survey.damaged] == [child]

    code, out, _ = _run(capsys, "--store", location, "tree")
    assert code == EXIT_PROBLEMS and out.startswith(f"{root[:12]}  full_model") and f"{child[:12]}  DAMAGED" in out
    code, out, _ = _run(capsys, "--store", location, "tree", "--json")
    assert code == EXIT_PROBLEMS and _listed_ids(out) == [root, child] and json.loads(out)[1]["children"] is None

    code, out, err = _run(capsys, "--store", location, "show", child)
    assert code == EXIT_PROBLEMS and out == "" and f"document {MODEL_INFO} {child} is damaged" in err
    code, out, _ = _run(capsys, "--store", location, "show", root, "--json")
    assert code == EXIT_OK and json.loads(out)["damage"] == []

    code, out, _ = _run(capsys, "--store", location, "verify", "--json")
    problems = json.loads(out)["problems"]
    assert code == EXIT_PROBLEMS and [(p["model_id"], p["item"]) for p in problems] == [(child, "metadata")]


@pytest.mark.parametrize("field, value", [(DERIVED_FROM, 5), (STORE_TYPE, "teleported"), (CREATED, "yesterday"),
                                          (DERIVED_FROM, {"id": "x"}), (CREATED, True)], ids=str)
def test_a_wrongly_typed_field_marks_one_model_and_the_others_are_listed(two_models, capsys, field, value):
    location, store, root, child = two_models
    forged = forge_record(store.dict_pers_service, child, model_fields={field: value})
    with pytest.raises(IntegrityError, match=f"document {MODEL_INFO} {forged} is damaged"):
        ModelInfo.load(forged, store.file_pers_service, store.dict_pers_service, "unused")
    code, out, _ = _run(capsys, "--store", location, "ls", "--json")
    entries = {entry["model_id"]: entry for entry in json.loads(out)}
    assert code == EXIT_PROBLEMS and set(entries) == {root, child, forged}
    assert entries[root]["size"] and entries[child]["size"] and entries[forged]["damaged"]
    code, out, _ = _run(capsys, "--store", location, "tree")
    assert code == EXIT_PROBLEMS and out.startswith(root[:12]) and f"`-- {child[:12]}" in out
    code, out, _ = _run(capsys, "--store", location, "verify")
    assert code == EXIT_PROBLEMS and "1 problem(s) in 1 of 3 model(s)" in out and forged in out


def test_a_reference_of_the_wrong_type_is_an_integrity_error_naming_the_document(two_models):
    location, store, _, child = two_models
    for field, value in (("weights_hash_info", "not a tree"), ("recover_info_id", {"not": "an id"})):
        forged_field = forge_record(store.dict_pers_service, child, model_fields={field: value})
        with pytest.raises(IntegrityError, match=f"document {MODEL_INFO} {forged_field} is damaged \\(field {field!r}"):
            ModelInfo.load(forged_field, store.file_pers_service, store.dict_pers_service, "unused")
        store.dict_pers_service.delete_dict(forged_field, MODEL_INFO)
    forged = forge_record(store.dict_pers_service, child, parameters=["not", "a", "reference"])
    recover_info_id = store.dict_pers_service.recover_dict(forged, MODEL_INFO)["recover_info_id"]
    for action in (lambda: ModelInfo.load(forged, store.file_pers_service, store.dict_pers_service, "unused", True),
                   lambda: list(ModelInfo.load_placeholder(forged).stored_items(store.dict_pers_service)),
                   lambda: ModelInfo.load_placeholder(forged).size_info(*store)):
        with pytest.raises(IntegrityError, match=f"document recover_info {recover_info_id} is damaged"):
            action()
    assert [damaged.model_id for damaged in maintenance.survey(store).damaged] == [forged]


def test_a_loop_entered_from_outside_is_named_by_lineage_show_verify_ls_and_tree(tmp_path, capsys):
    location = str(tmp_path / "store")
    store = open_store(location)
    (b_id, a_id, c_id), _ = save_update_chain(store, 3)  # C's base is A, A's base is B
    healthy = BaselineSaveService(*store).save_model(save_info(TinyNet()))
    store.dict_pers_service.add_field(b_id, MODEL_INFO, DERIVED_FROM, a_id)  # and now B's base is A

    outcome = promptly(lambda: maintenance.lineage(store, c_id))
    assert "error" in outcome and f"the lineage of model {c_id} loops ({a_id} -> {b_id} -> {a_id})" in str(
        outcome["error"])
    details = promptly(lambda: maintenance.model_details(store, c_id))["value"]
    assert [v.model_id for v in details.lineage] == [c_id, a_id, b_id]
    assert any(f"loops ({a_id} -> {b_id} -> {a_id})" in problem for problem in details.damage)
    problems = promptly(lambda: maintenance.verify(store))["value"]
    assert {(p.model_id, p.item) for p in problems if p.item == "lineage"} == {(b_id, "lineage"), (a_id, "lineage"),
                                                                               (c_id, "lineage")}
    versions, damaged = promptly(lambda: maintenance.scan_versions(store))["value"]
    assert [v.model_id for v in versions] == [healthy] and {d.model_id for d in damaged} == {a_id, b_id, c_id}

    code, out, err = _run(capsys, "--store", location, "show", c_id)
    assert code == EXIT_PROBLEMS and "DAMAGE" in out and f"loops ({a_id} -> {b_id} -> {a_id})" in out and err
    for command in ("ls", "tree"):
        code, out, err = _run(capsys, "--store", location, command)
        assert code == EXIT_PROBLEMS and "3 of 4 model(s) damaged" in err and healthy[:12] in out
        assert f"damaged model {c_id}: the lineage of model {c_id} loops" in out
    code, out, _ = _run(capsys, "--store", location, "verify")
    assert code == EXIT_PROBLEMS and f"model {c_id}: lineage: corruption: the lineage of model {c_id} loops" in out


def test_a_damaged_model_can_be_removed(two_models, capsys):
    location, store, root, child = two_models
    _write_body(location, child, "{not json")
    code, out, _ = _run(capsys, "--store", location, "rm", child)
    assert code == EXIT_OK and maintenance.all_model_ids(store) == [root]
    code, _, _ = _run(capsys, "--store", location, "ls")
    assert code == EXIT_OK


def test_gc_refuses_a_store_with_a_missing_blob_or_a_damaged_document_and_keeps_a_corrupted_one(two_models, capsys):
    location, store, root, child = two_models
    orphan = store.file_pers_service.save_bytes(b"nobody needs me", "orphan.bin").reference_id.split("/")[0]
    corrupted, missing = sorted(item.item_id for item in
                                ModelInfo.load_placeholder(child).stored_items(store.dict_pers_service)
                                if item.kind == BLOB)[:2]
    corrupt_blob(store.file_pers_service, corrupted)
    assert maintenance.collect_garbage(store, grace_seconds=0, dry_run=True).blobs == [orphan]
    store.file_pers_service.delete_blob(missing)
    refusal = (f"the store is damaged \\(model ({root}|{child}) needs blob {missing}: the blob is missing\\), "
               "and garbage collection refuses to run until it is repaired: run `mmlib verify` and repair what it "
               "reports")
    with pytest.raises(IntegrityError, match=refusal):
        maintenance.collect_garbage(store, grace_seconds=0)
    code, out, err = _run(capsys, "--store", location, "gc", "--grace", "0")
    assert code == EXIT_PROBLEMS and out == "" and "mmlib verify" in err and missing in err
    assert store.file_pers_service.blob_exists(orphan)

    location2 = location + "-2"
    store2 = open_store(location2)
    healthy = BaselineSaveService(*store2).save_model(save_info(TinyNet()))
    damaged = forge_record(store2.dict_pers_service, healthy, model_fields={DERIVED_FROM: 5})
    _write_body(location2, damaged, "{not json")
    code, out, err = _run(capsys, "--store", location2, "gc", "--grace", "0", "--dry-run")
    assert code == EXIT_PROBLEMS and f"document {MODEL_INFO} {damaged} is damaged" in err
    assert "garbage collection refuses to run until it is repaired: run `mmlib verify`" in err


def test_verify_says_what_to_do_once(tmp_path, capsys):
    location = str(tmp_path / "store")
    store = open_store(location)
    ids, _ = save_update_chain(store, 3)
    digest = sorted(item.item_id for item in ModelInfo.load_placeholder(ids[0]).stored_items(store.dict_pers_service)
                    if item.kind == BLOB)[0]
    corrupt_blob(store.file_pers_service, digest)
    code, out, _ = _run(capsys, "--store", location, "verify")
    lines = out.splitlines()
    assert code == EXIT_PROBLEMS and len([line for line in lines if f"blob {digest}" in line]) == 3
    assert out.count("backup") == 1 and lines[-1] == f"corruption: {maintenance.ADVICE[maintenance.CORRUPTION]}"
    code, out, _ = _run(capsys, "--store", location, "verify", "--json")
    report = json.loads(out)
    assert report["advice"] == {"corruption": maintenance.ADVICE["corruption"]}
    assert all("backup" not in problem["message"] for problem in report["problems"])


def test_rm_and_gc_say_that_the_grace_period_keeps_new_items(two_models, capsys):
    location, store, root, child = two_models
    code, out, _ = _run(capsys, "--store", location, "rm", child)
    assert code == EXIT_OK and "`mmlib gc --grace 0`" in out and "grace period" in out
    code, out, _ = _run(capsys, "--store", location, "gc")
    assert code == EXIT_OK and "removed 0 document(s), 0 blob(s)" in out
    assert "item(s) kept for the grace period go in a later run, or now with `mmlib gc --grace 0`" in out
    code, out, _ = _run(capsys, "--store", location, "gc", "--grace", "0")
    assert code == EXIT_OK and "kept 0 unreferenced item(s)" in out and "grace period go" not in out
    assert maintenance.collect_garbage(store, grace_seconds=0).count == 0


@pytest.mark.parametrize("length", [1, 2, 3])
def test_a_hex_prefix_shorter_than_the_minimum_says_so(two_models, capsys, length):
    location, store, root, _ = two_models
    code, _, err = _run(capsys, "--store", location, "show", root[:length])
    assert code == EXIT_USAGE and f"an id prefix needs at least {maintenance.MIN_PREFIX} hex digits" in err
    code, _, err = _run(capsys, "--store", location, "show", "xyz"[:length])
    assert code == EXIT_USAGE and "no model with id" in err and "prefix" not in err
    assert maintenance.resolve_model_id(store, root[:maintenance.MIN_PREFIX]) == root


def test_version_prints_the_version_of_mmlib(capsys):
    code, out, _ = _run(capsys, "--version")
    assert code == EXIT_OK and out == f"mmlib {mmlib.__version__}\n"
    assert not mmlib.__version__.startswith("0.1."), "0.1 wrote store format 1, which this mmlib refuses"
