"""Environment capture: cached, complete, and compared with a list of differences."""

import time
import warnings

import pytest

from mmlib.errors import EnvironmentMismatchError, EnvironmentMismatchWarning
from mmlib.track_env import check_environment, compare_env_to_current, environment_differences, \
    track_current_environment


def test_environment_records_torch_and_packages():
    env = track_current_environment()
    assert env.pytorch_version.startswith("2.")
    assert any(entry.lower().startswith("torch==") for entry in env.pip_freeze)
    assert compare_env_to_current(env)


def test_capture_is_cached():
    track_current_environment()
    start = time.perf_counter()
    for _ in range(100):
        track_current_environment()
    assert time.perf_counter() - start < 1.0


def test_differences_are_listed_and_strict_mode_raises():
    env = track_current_environment()
    env.pytorch_version = "0.0.1"
    env.pip_freeze = env.pip_freeze[1:] + ["ghost-package==1.0"]
    differences = environment_differences(env)
    assert any("pytorch_version" in d for d in differences)
    assert any("ghost-package==1.0" in d for d in differences)
    assert not compare_env_to_current(env)
    with pytest.warns(EnvironmentMismatchWarning, match="pytorch_version"):
        check_environment(env, "model x")
    with pytest.raises(EnvironmentMismatchError, match="ghost-package"):
        check_environment(env, "model x", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_environment(track_current_environment(), "model x")
