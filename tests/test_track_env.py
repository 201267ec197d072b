"""Environment capture: cached, complete, and compared with a list of differences."""

import importlib.metadata
import logging
import warnings

import pytest
import torch

from mmlib import track_env
from mmlib.errors import EnvironmentMismatchError, EnvironmentMismatchWarning
from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import check_environment, compare_env_to_current, environment_differences, \
    imported_distributions, track_current_environment
from mmlib.util.init_from_file import create_type


def test_environment_records_torch_and_packages():
    env = track_current_environment()
    assert env.pytorch_version.startswith("2.")
    assert any(entry.lower().startswith("torch==") for entry in env.pip_freeze)
    assert compare_env_to_current(env)


def test_capture_is_cached(monkeypatch):
    listed = []
    list_packages = track_env._installed_packages
    monkeypatch.setattr(track_env, "_installed_packages", lambda: listed.append(1) or list_packages())
    track_env._current_environment_values.cache_clear()
    first, second = track_current_environment(), track_current_environment()
    assert len(listed) == 1  # the second call is served from the cache
    assert first.pip_freeze == second.pip_freeze
    first.pip_freeze.append("changed==1")  # each caller gets its own copy of the cached lists
    assert track_current_environment().pip_freeze == second.pip_freeze


def test_the_installed_packages_are_those_importlib_lists():
    expected = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in expected:
            expected[name.lower()] = f"{name}=={dist.version}"
    assert track_env._installed_packages() == sorted(expected.values(), key=str.lower)


def _replaced(freeze: list[str], name: str, version: str) -> list[str]:
    """`freeze` with the version of `name` changed (the entry added when absent)."""
    others = [entry for entry in freeze if entry.lower().split("==")[0] != name]
    return others + [f"{name}=={version}"]


def test_differences_that_can_change_a_model_warn_and_strict_mode_raises():
    env = track_current_environment()
    env.pytorch_version = "0.0.1"
    env.pip_freeze = _replaced(env.pip_freeze, "numpy", "1.0.0")
    numpy_now = importlib.metadata.version("numpy")
    differences = environment_differences(env)
    assert differences == [f"torch 0.0.1 -> {torch.__version__}", f"numpy 1.0.0 -> {numpy_now}"]
    assert not compare_env_to_current(env)
    with pytest.warns(EnvironmentMismatchWarning, match=f"numpy 1.0.0 -> {numpy_now}"):
        check_environment(env, "model x")
    with pytest.raises(EnvironmentMismatchError, match="torch 0.0.1"):
        check_environment(env, "model x", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_environment(track_current_environment(), "model x")


@pytest.mark.parametrize("package", ["numpy", "safetensors"])
def test_a_package_installed_only_after_the_save_is_a_difference(package):
    env = track_current_environment()
    env.pip_freeze = [entry for entry in env.pip_freeze if not entry.lower().startswith(f"{package}==")]
    with pytest.raises(EnvironmentMismatchError,
                       match=rf"{package} \(not installed\) -> {importlib.metadata.version(package)}"):
        check_environment(env, "model x", strict=True, packages=["safetensors"])


def test_other_packages_and_hardware_are_only_logged(caplog):
    env = track_current_environment()
    env.pip_freeze = [entry for entry in env.pip_freeze if not entry.lower().startswith("pytest==")]
    env.pip_freeze = _replaced(env.pip_freeze, "ghost-package", "1.0") + ["Some_Tool==2.0"]
    env.processor_info = "a different processor"
    assert environment_differences(env) == [] and compare_env_to_current(env)
    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG, logger="mmlib.track_env"):
        warnings.simplefilter("error")
        check_environment(env, "model x", strict=True)
    logged = caplog.text
    assert "ghost-package 1.0 -> (not installed)" in logged and "processor_info" in logged
    assert f"pytest (not installed) -> {importlib.metadata.version('pytest')}" in logged
    assert "some-tool 2.0 -> (not installed)" in logged


def test_packages_the_code_imports_are_compared(tmp_path):
    code = tmp_path / "net_with_imports.py"
    code.write_text("import os\nimport numpy as np\nfrom safetensors.torch import save\nfrom . import sibling\n"
                    "import torch.nn\n")
    assert imported_distributions(str(code)) == ["numpy", "safetensors", "torch"]
    env = track_current_environment()
    env.pip_freeze = _replaced(env.pip_freeze, "safetensors", "0.0.1")
    assert environment_differences(env) == []
    assert environment_differences(env, imported_distributions(str(code))) == [
        f"safetensors 0.0.1 -> {importlib.metadata.version('safetensors')}"]


def test_a_model_whose_code_imports_a_changed_package_warns_at_recovery(tmp_path):
    code = tmp_path / "net_using_safetensors.py"
    code.write_text("import safetensors\nimport torch\n\n\nclass Net(torch.nn.Linear):\n"
                    "    def __init__(self):\n        super().__init__(2, 2)\n")
    net = create_type(str(code), "Net")()
    env = track_current_environment()
    env.pip_freeze = _replaced(env.pip_freeze, "safetensors", "0.0.1") + ["pytest==0.1"]
    service = BaselineSaveService(*open_store(str(tmp_path / "store")))
    info = ModelSaveInfoBuilder().add_model_info(env=env, model=net, code=str(code)).build()
    model_id = service.save_model(info)
    with pytest.warns(EnvironmentMismatchWarning) as caught:
        service.recover_model(model_id)
    assert [str(warning.message).count("->") for warning in caught] == [1]
    assert "safetensors 0.0.1 ->" in str(caught[0].message) and "pytest" not in str(caught[0].message)
