"""Build classes and objects from stored code without exec/eval: importlib only, names checked first."""

import importlib
import importlib.util
import inspect
import os
import re
import sys
import threading
from types import ModuleType
from typing import Any, Optional

from mmlib.errors import UnsafeCodeError
from mmlib.util.distributions import installed_version, module_distributions
from mmlib.util.hash import new_hasher

CODE_MODULE_PREFIX = "mmlib_code_"
# Set on every module imported from stored code: (file name, source bytes), so a model of a recovered class
# can be saved into any store, with its code, after the restore directory is gone.
STORED_CODE_ATTRIBUTE = "__mmlib_stored_code__"
_IDENTIFIER = r"[A-Za-z_]\w*"
_DOTTED_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_FROM_IMPORT = re.compile(rf"\s*from\s+({_DOTTED_NAME})\s+import\s+([A-Za-z_]\w*)\s*")
_PLAIN_IMPORT = re.compile(rf"\s*import\s+({_DOTTED_NAME})\s*")


def check_class_name(class_name: object) -> str:
    """Return `class_name` if it is a (dotted) Python identifier; raise UnsafeCodeError otherwise."""
    if not isinstance(class_name, str) or not re.fullmatch(_DOTTED_NAME, class_name):
        raise UnsafeCodeError(
            f"refusing class name {class_name!r}: it must be a Python identifier such as 'ResNet18'; "
            "the stored metadata may have been tampered with, run `mmlib verify`")
    return class_name


def parse_import_cmd(import_cmd: str) -> tuple[str, Optional[str]]:
    """Split `from a.b import C` into ('a.b', 'C') and `import a.b` into ('a.b', None); refuse anything else."""
    if isinstance(import_cmd, str):
        match = _FROM_IMPORT.fullmatch(import_cmd)
        if match:
            return match.group(1), match.group(2)
        match = _PLAIN_IMPORT.fullmatch(import_cmd)
        if match:
            return match.group(1), None
    raise UnsafeCodeError(
        f"refusing import command {import_cmd!r}: only 'from package.module import Name' or "
        "'import package.module' are accepted, and nothing of it was run")


_LOADING = threading.RLock()


def load_code_module(code: str) -> ModuleType:
    """Import the file at `code` under a module name unique to its bytes; the same bytes give the same module."""
    with open(code, "rb") as handle:
        source = handle.read()
    hasher = new_hasher()
    hasher.update(source)
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(code))[0])
    module_name = f"{CODE_MODULE_PREFIX}{hasher.hexdigest()[:24]}_{stem}"
    with _LOADING:  # a module is in sys.modules while its code runs: other threads must not take it half-loaded
        if module_name in sys.modules:
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, code)
        if spec is None or spec.loader is None:  # no loader for the file's suffix
            raise ImportError(f"cannot import the code file {os.path.basename(code)!r}: Python imports only source "
                              "files ending in .py; pass the .py file that defines the class")
        module = importlib.util.module_from_spec(spec)
        setattr(module, STORED_CODE_ATTRIBUTE, (os.path.basename(code), source))
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return module


def stored_code_of(cls: type) -> Optional[tuple[str, bytes]]:
    """(file name, source bytes) of the stored code `cls` was imported from, or None for other classes."""
    module = sys.modules.get(getattr(cls, "__module__", ""))
    stored = getattr(module, STORED_CODE_ATTRIBUTE, None)
    return stored if isinstance(stored, tuple) else None


def _attribute_path(root: Any, dotted_name: str) -> Any:
    """Follow `a.b.C` attribute by attribute from `root`."""
    value = root
    for part in dotted_name.split("."):
        value = getattr(value, part)
    return value


def _check_defined_in(value: Any, package: str, what: str, functions: bool = True) -> Any:
    """`value` if it is a class (or, with `functions`, a function) whose module is `package` or inside it;
    UnsafeCodeError otherwise. Stops a stored name from reaching what a module merely imports (`os`, ...)."""
    module = getattr(value, "__module__", None) or ""
    kinds = "class or function" if functions else "class"
    if not (inspect.isclass(value) or (functions and inspect.isfunction(value))) or not (
            module == package or module.startswith(package + ".")):
        raise UnsafeCodeError(f"refusing {what}: it is not a {kinds} defined in {package!r}; the stored metadata "
                              "may have been changed, run `mmlib verify`")
    return value


def create_type(code: Optional[str], type_name: Optional[str]) -> type:
    """The class named `type_name` defined in the code file `code` itself (not imported there).

    Both may be None, as a wrapper's `code.path` and `class_name` are before loading: that raises.
    """
    if not isinstance(type_name, str) or not re.fullmatch(_IDENTIFIER, type_name):
        raise UnsafeCodeError(f"refusing class name {type_name!r}: stored code is entered by one plain identifier "
                              "such as 'ResNet18'; the stored metadata may have been changed, run `mmlib verify`")
    if code is None:
        raise TypeError(f"no code file to import {type_name} from: restore it first (load the wrapper with "
                        "load_files=True)")
    module = load_code_module(code)
    value = getattr(module, type_name, None)
    return _check_defined_in(value, module.__name__, f"{type_name!r} of the stored code {os.path.basename(code)!r}",
                             functions=False)


def create_object(code: Optional[str], class_name: Optional[str]) -> Any:
    """An instance of `class_name` from the code file `code`, built without arguments."""
    return create_type(code, class_name)()


def import_type(import_cmd: str, class_name: str) -> type:
    """The class `class_name` made available by a plain import command, imported with importlib."""
    check_class_name(class_name)
    module_name, imported_name = parse_import_cmd(import_cmd)
    module = importlib.import_module(module_name)
    if imported_name is None:
        relative = class_name[len(module_name) + 1:] if class_name.startswith(module_name + ".") else class_name
        return _attribute_path(module, relative)
    head, _, rest = class_name.partition(".")
    if head != imported_name:
        raise UnsafeCodeError(f"class name {class_name!r} is not what {import_cmd!r} imports")
    value = getattr(module, imported_name)
    return _attribute_path(value, rest) if rest else value


def parse_import_path(import_path: str) -> tuple[str, str]:
    """Split `package.module:Name` (a class or factory function) into its module and attribute name.

    Refuses modules of the standard library and dotted attribute walks (`torch:os.system`).
    """
    module_name, sep, attribute = import_path.partition(":") if isinstance(import_path, str) else ("", "", "")
    if not sep or not re.fullmatch(_DOTTED_NAME, module_name) or not re.fullmatch(_IDENTIFIER, attribute):
        raise UnsafeCodeError(
            f"refusing import path {import_path!r}: write it as 'package.module:ClassOrFactory', "
            "e.g. 'torchvision.models:resnet18'")
    if module_name.split(".")[0] in sys.stdlib_module_names:
        raise UnsafeCodeError(f"refusing import path {import_path!r}: models come from installed packages or "
                              "stored code, never from the standard library; the stored metadata may have been "
                              "changed, run `mmlib verify`")
    return module_name, attribute


def import_object(import_path: str) -> Any:
    """The class or factory named by `package.module:Name`: one defined in that package, imported with importlib."""
    module_name, attribute = parse_import_path(import_path)
    value = getattr(importlib.import_module(module_name), attribute)
    return _check_defined_in(value, module_name.split(".")[0], f"import path {import_path!r}")


def distribution_of(import_path: str) -> Optional[dict]:
    """{'name', 'version'} of the installed distribution providing `import_path`'s top-level package, if any."""
    top_level = parse_import_path(import_path)[0].split(".")[0]
    names = module_distributions([top_level])[top_level]
    if not names:
        return None
    return {"name": names[0], "version": installed_version(names[0])}


def create_object_with_parameters(class_name: str, init_args: dict, code_file: Optional[str] = None,
                                  import_cmd: Optional[str] = None,
                                  init_ref_type_args: Optional[dict] = None) -> Any:
    """Instantiate `class_name` (from `code_file` or `import_cmd`) with JSON `init_args` and object arguments."""
    if import_cmd is not None:
        cls = import_type(import_cmd, class_name)
    elif code_file is not None:
        cls = create_type(code_file, class_name)
    else:
        raise UnsafeCodeError(f"cannot build {class_name!r}: give a code file or an import command")
    kwargs = dict(init_args or {})
    kwargs.update(init_ref_type_args or {})
    return cls(**kwargs)
