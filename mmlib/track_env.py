"""Capture the current environment once per process (installed distributions read by mmlib.util.distributions, no
subprocess) and compare to it.

Recovery compares what can change a rebuilt model (Python, torch, numpy, the packages the model's code imports)
and only logs other differences: installing pytest must not make every recovery warn.
"""

import ast
import functools
import logging
import platform
import re
import sys
import warnings
from typing import Iterable, Optional

import torch

from mmlib.errors import EnvironmentMismatchError, EnvironmentMismatchWarning
from mmlib.schema.environment import ENVIRONMENT_FIELDS, Environment
from mmlib.util.distributions import installed_distributions, module_distributions

logger = logging.getLogger(__name__)

# Compared at every recovery besides the Python version and the packages the model's code imports.
ALWAYS_COMPARED = ("torch", "numpy")
_INCIDENTAL_FIELDS = ("processor_info", "gpu_types", "pytorch_info", "python_platform_info")


def _installed_packages() -> list[str]:
    """`name==version` of every installed distribution, sorted (what `pip freeze` lists, in milliseconds)."""
    seen = {}
    for name, version in installed_distributions():
        if name.lower() not in seen:
            seen[name.lower()] = f"{name}=={version}"
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


def _distribution_key(name: str) -> str:
    """A distribution name as package indexes compare them (PEP 503: case and `-_.` runs do not matter)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _versions(pip_freeze: Optional[Iterable[str]]) -> dict[str, str]:
    """Normalised distribution name -> version, from `name==version` entries."""
    versions = {}
    for entry in pip_freeze or []:
        name, separator, version = str(entry).partition("==")
        if separator:
            versions[_distribution_key(name)] = version
    return versions


def _change(name: str, saved: Optional[str], now: Optional[str]) -> str:
    return f"{name} {saved or '(not installed)'} -> {now or '(not installed)'}"


def environment_differences(env: Environment, packages: Iterable[str] = ()) -> list[str]:
    """The differences between `env` and now that can change a recovered model, one entry each: the Python
    version, torch, numpy and the distributions named in `packages` (those the model's code imports)."""
    current = track_current_environment()
    differences = []
    if env.python_version != current.python_version:
        differences.append(_change("Python", env.python_version, current.python_version))
    if env.pytorch_version != current.pytorch_version:
        differences.append(_change("torch", env.pytorch_version, current.pytorch_version))
    saved, now = _versions(env.pip_freeze), _versions(current.pip_freeze)
    for name in sorted({_distribution_key(package) for package in (*ALWAYS_COMPARED, *packages)} - {"torch"}):
        if saved.get(name) != now.get(name):
            differences.append(_change(name, saved.get(name), now.get(name)))
    return differences


def incidental_differences(env: Environment, packages: Iterable[str] = ()) -> list[str]:
    """The differences `environment_differences` leaves out (other packages, processor, platform, build details):
    they do not change how a model is rebuilt, so recovery only logs them at debug level."""
    current = track_current_environment()
    differences = [f"{name}: saved {getattr(env, name)!r}, now {getattr(current, name)!r}"
                   for name in _INCIDENTAL_FIELDS if getattr(env, name) != getattr(current, name)]
    compared = {_distribution_key(package) for package in (*ALWAYS_COMPARED, *packages)}
    saved, now = _versions(env.pip_freeze), _versions(current.pip_freeze)
    differences += [_change(name, saved.get(name), now.get(name)) for name in sorted(saved.keys() | now.keys())
                    if name not in compared and saved.get(name) != now.get(name)]
    return differences


def compare_env_to_current(env: Environment) -> bool:
    """True when `env` does not differ from the current environment in anything that can change a model."""
    return not environment_differences(env)


def imported_distributions(code_path: str) -> list[str]:
    """The installed distributions whose modules the Python file at `code_path` imports (absolute imports only)."""
    try:
        with open(code_path, "rb") as handle:
            source = handle.read()
    except OSError:
        return []
    providers = module_distributions(sorted(_imported_modules(source) - set(sys.stdlib_module_names)))
    return sorted({dist for dists in providers.values() for dist in dists})


@functools.lru_cache(maxsize=64)
def _imported_modules(source: bytes) -> frozenset[str]:
    """Top-level modules a Python source imports absolutely; cached, since every recovery of a model checks the
    same stored code (parsing ResNet's took 20 ms of each recovery)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return frozenset()
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
    return frozenset(modules)


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


def check_environment(env: Environment, context: str, strict: bool = False, packages: Iterable[str] = ()) -> None:
    """Warn (or, when `strict`, raise) if `env` differs from now in what can change a model (see
    `environment_differences`; `packages`: the distributions the model's code imports); log the rest at debug."""
    incidental = incidental_differences(env, packages)
    if incidental:
        logger.debug("%s was saved in an environment that also differs in: %s", context, "; ".join(incidental))
    differences = environment_differences(env, packages)
    if not differences:
        return
    message = (f"{context} was saved in a different environment: {'; '.join(differences)}. "
               "Results may differ; install the saved versions to reproduce it exactly")
    if strict:
        raise EnvironmentMismatchError(message)
    warnings.warn(message, EnvironmentMismatchWarning, stacklevel=3)
