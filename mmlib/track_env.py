"""Capture the current environment once per process (importlib.metadata, no subprocess) and compare to it."""

import functools
import importlib.metadata
import platform
import warnings
from typing import Optional

import torch

from mmlib.errors import EnvironmentMismatchError, EnvironmentMismatchWarning
from mmlib.schema.environment import ENVIRONMENT_FIELDS, Environment


def _installed_packages() -> list[str]:
    """`name==version` of every installed distribution, sorted (what `pip freeze` lists, in milliseconds)."""
    seen = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return sorted(seen.values(), key=str.lower)


def _gpu_types() -> list[str]:
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


@functools.lru_cache(maxsize=1)
def _current_environment_values() -> tuple:
    values = {
        "python_version": platform.python_version(),
        "pytorch_version": torch.__version__,
        "processor_info": platform.processor() or platform.machine(),
        "gpu_types": _gpu_types(),
        "pytorch_info": torch.__config__.show(),
        "python_platform_info": platform.platform(),
        "pip_freeze": _installed_packages(),
    }
    return tuple(values[name] for name in ENVIRONMENT_FIELDS)


def track_current_environment() -> Environment:
    """The environment of this process; computed once, then served from a cache."""
    return Environment(**dict(zip(ENVIRONMENT_FIELDS, _copy(_current_environment_values()))))


def _copy(values: tuple) -> list:
    return [list(value) if isinstance(value, list) else value for value in values]


def environment_differences(env: Environment) -> list[str]:
    """Human-readable differences between `env` and the current environment (empty when equal)."""
    current = track_current_environment()
    differences = []
    for name in ENVIRONMENT_FIELDS:
        saved, now = getattr(env, name), getattr(current, name)
        if name == "pip_freeze":
            saved_set, now_set = set(saved or []), set(now or [])
            differences += [f"package {p} was installed at save time, not now" for p in sorted(saved_set - now_set)]
            differences += [f"package {p} is installed now, not at save time" for p in sorted(now_set - saved_set)]
        elif saved != now:
            differences.append(f"{name}: saved {saved!r}, now {now!r}")
    return differences


def compare_env_to_current(env: Environment) -> bool:
    """True when `env` equals the current environment."""
    return not environment_differences(env)


def check_package(package: Optional[dict], installed: Optional[dict], context: str, strict: bool = False) -> None:
    """Warn (or, when `strict`, raise) if the package a model was imported from is missing or another version."""
    if package is None or installed == package:
        return
    now = f"version {installed['version']}" if installed else "not installed"
    message = (f"{context} was saved with {package['name']}=={package['version']}, now {now}; install "
               f"{package['name']}=={package['version']} to rebuild it exactly")
    if strict:
        raise EnvironmentMismatchError(message)
    warnings.warn(message, EnvironmentMismatchWarning, stacklevel=3)


def check_environment(env: Environment, context: str, strict: bool = False) -> None:
    """Warn (or, when `strict`, raise) if `env` differs from the current environment."""
    differences = environment_differences(env)
    if not differences:
        return
    shown = "; ".join(differences[:20]) + (f"; and {len(differences) - 20} more" if len(differences) > 20 else "")
    message = (f"{context} was saved in a different environment: {shown}. "
               "Results may differ; install the saved versions to reproduce it exactly")
    if strict:
        raise EnvironmentMismatchError(message)
    warnings.warn(message, EnvironmentMismatchWarning, stacklevel=3)
