"""`logging=True` prints the original MMlib's JSON timing events on stdout (and logs them through `logging`)."""

import json
import logging

import pytest

from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from save_helpers import perturb, save_info
from tiny_models import TinyNet

ORIGINAL_KEYS = {"start-stop", "_id", "approach", "method", "event", "time"}


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("make_service, approach", [
    (lambda stores: BaselineSaveService(*stores, logging=True), "baseline"),
    (lambda stores: WeightUpdateSaveService(*stores, improved_version=False, logging=True), "param_update"),
    (lambda stores: WeightUpdateSaveService(*stores, logging=True), "param_update_improved"),
], ids=["baseline", "update", "improved"])
def test_logging_prints_the_original_timing_events(tmp_path, capsys, make_service, approach):
    service = make_service(open_store(str(tmp_path / "store")))
    model = TinyNet()
    base_id = service.save_model(save_info(model))
    child_id = service.save_model(save_info(perturb(model), base_model_id=base_id))
    service.recover_model(child_id)
    events = _events(capsys.readouterr().out)
    assert events and all(set(event) == ORIGINAL_KEYS for event in events)
    assert {event["approach"] for event in events} == {approach}
    assert [(e["method"], e["event"], e["start-stop"]) for e in events if e["event"] == "all"] == [
        ("save_model", "all", "start"), ("save_model", "all", "stop")] * 2 + [
        ("recover_model", "all", "start"), ("recover_model", "all", "stop")]
    by_id: dict = {}
    for event in events:
        by_id.setdefault(event["_id"], []).append(event)
    for pair in by_id.values():
        assert [event["start-stop"] for event in pair] == ["start", "stop"]
        assert pair[0]["time"] <= pair[1]["time"] and isinstance(pair[0]["time"], int)
        assert {(event["method"], event["event"]) for event in pair} == {(pair[0]["method"], pair[0]["event"])}
    assert any(event["method"] == "save_model" and event["event"] != "all" for event in events)


def test_without_logging_nothing_is_printed_and_the_logging_module_gets_the_events(tmp_path, capsys, caplog):
    store = open_store(str(tmp_path / "store"))
    BaselineSaveService(*store).save_model(save_info(TinyNet()))
    assert capsys.readouterr().out == ""
    with caplog.at_level(logging.INFO, logger="mmlib"):
        model_id = BaselineSaveService(*store, logging=True).save_model(save_info(TinyNet()))
    logged = [json.loads(record.getMessage()) for record in caplog.records if record.getMessage().startswith("{")]
    printed = _events(capsys.readouterr().out)
    assert printed and [{key: event[key] for key in ORIGINAL_KEYS} for event in logged] == printed
    assert model_id in BaselineSaveService(*store).all_model_ids()
