"""Where a snapshot's model code comes from: a code file to store, or an import path, plus constructor arguments.

`resolve_model_source` decides it once per save, from the sources listed in its docstring, and refuses a
source that recovery could not use (a nested class, init_args the constructor rejects) before anything is
written.
"""

import ast
import functools
import inspect
import logging
import os
import sys
from typing import Any, Callable, NamedTuple, Optional

from mmlib.errors import InvalidSaveInfoError
from mmlib.persistence.base import FileReference
from mmlib.save_info import ModelSaveInfo
from mmlib.schema.recover_info import FullModelRecoverInfo
from mmlib.schema.restorable_object import check_json_value, source_file
from mmlib.util.hash import new_hasher
from mmlib.util.init_from_file import check_class_name, create_type, distribution_of, import_object, stored_code_of

logger = logging.getLogger(__name__)


class ModelSource(NamedTuple):
    """How a snapshot rebuilds its model: a code file or an import path, plus JSON constructor arguments.

    `target` is the class or factory that recovery will call, here in this process (for validation).
    """

    code: Optional[FileReference]
    model_import: Optional[str]
    init_args: Optional[dict]
    package: Optional[dict]
    target: Callable[..., Any]


def resolve_model_source(save_info: ModelSaveInfo, base_snapshot: Callable[[str], FullModelRecoverInfo],
                         import_target: Callable[[FullModelRecoverInfo], Callable[..., Any]],
                         code_dir: str) -> ModelSource:
    """How a snapshot of `save_info.model` will be rebuilt, from the first of these sources that has its code:

    1. the import path given with the save info (`model_import`);
    2. the code file given with the save info (`model_code`);
    3. the import path of the base's snapshot, when it names a class of the model's class name;
    4. the stored code the model's class was recovered from (copied under `code_dir`, so this store keeps it);
    5. the import path `module:Class` of a class whose module imports relatively (an installed package's);
    6. the source file of the model's class;
    7. the code stored with the base's snapshot.

    `base_snapshot(base_id)` gives the nearest full snapshot in the base's lineage (looked up for sources 3-7,
    which also take their default init_args from it); `import_target` imports what a snapshot names.
    """
    cls, init_args = type(save_info.model), save_info.init_args
    if save_info.model_import is not None:
        target = _imported(save_info.model_import)
        return ModelSource(None, save_info.model_import, _checked_init_args(init_args, target),
                           distribution_of(save_info.model_import), target)
    if save_info.model_code is not None:
        target = _defined_in(save_info.model_code, cls)
        return ModelSource(FileReference(path=save_info.model_code), None, _checked_init_args(init_args, target),
                           None, target)
    root = base_snapshot(save_info.base_model) if save_info.base_model is not None else None
    if root is not None:
        init_args = init_args if init_args is not None else root.model_init_args
        if root.model_import is not None and root.model_class_name == cls.__name__:
            target = import_target(root)
            return ModelSource(None, root.model_import, _checked_init_args(init_args, target), root.model_package,
                               target)
    stored_code = stored_code_of(cls)
    if stored_code is not None:
        _check_top_level(cls)
        return _code_source(FileReference(path=_stored_code_copy(code_dir, *stored_code)), init_args, cls)
    package_import = _package_import_path(cls)
    if package_import is not None:
        logger.info("%s comes from a package module that cannot be loaded on its own; saving it by import path %s",
                    cls.__qualname__, package_import)
        return ModelSource(None, package_import, _checked_init_args(init_args, cls), distribution_of(package_import),
                           cls)
    source = source_file(cls)
    if source and os.path.isfile(source):
        _check_top_level(cls)
        return _code_source(FileReference(path=source), init_args, cls)
    if root is not None:
        return _code_source(FileReference(reference_id=root.model_code.reference_id), init_args, cls)
    raise InvalidSaveInfoError(
        f"cannot find the source file of {cls.__qualname__} (defined in {cls.__module__!r}, e.g. a notebook); "
        "move the class into a .py module or pass its file with add_model_info(code=...)")


def _code_source(code: FileReference, init_args: Any, cls: type) -> ModelSource:
    return ModelSource(code, None, _checked_init_args(init_args, cls), None, cls)


def _imported(model_import: str) -> Callable[..., Any]:
    """The class or factory an import path given with the save info names."""
    try:
        return import_object(model_import)
    except (ImportError, AttributeError) as error:
        raise InvalidSaveInfoError(f"cannot import {model_import!r}: {error}; give an import path "
                                   "'package.module:ClassOrFactory' of an installed package") from error


def _defined_in(model_code: str, cls: type) -> Callable[..., Any]:
    """The class of the model's class name that a code file given with the save info defines."""
    if not os.path.isfile(model_code):
        raise InvalidSaveInfoError(f"model code file {model_code!r} does not exist; pass the .py file that defines "
                                   f"{cls.__name__}")
    try:
        return create_type(model_code, check_class_name(cls.__name__))
    except (ImportError, AttributeError, SyntaxError) as error:
        raise InvalidSaveInfoError(f"the code file {model_code!r} does not define {cls.__name__} ({error}); pass "
                                   "the .py file that defines the model's class") from error


def _stored_code_copy(code_dir: str, file_name: str, source: bytes) -> str:
    """A file holding code a class was recovered from, so the save stores it (content-addressed: once)."""
    directory = os.path.join(code_dir, new_hasher().update(source).hexdigest()[:16])
    path = os.path.join(directory, file_name)
    if not os.path.isfile(path):
        os.makedirs(directory, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(source)
    return path


@functools.lru_cache(maxsize=256)
def _imports_relatively(path: str, modified: float) -> bool:
    """Whether the Python file at `path` (as of mtime `modified`) has relative imports (`from . import x`)."""
    with open(path, "rb") as handle:
        tree = ast.parse(handle.read(), filename=path)
    return any(isinstance(node, ast.ImportFrom) and node.level > 0 for node in ast.walk(tree))


def _package_import_path(cls: type) -> Optional[str]:
    """`module:Class` for a class whose source file cannot be loaded on its own (it imports relatively, as modules
    of installed packages such as torch.nn or transformers do), so recovery imports it instead; else None."""
    source = source_file(cls)
    if not source or not os.path.isfile(source):
        return None
    try:
        relative = _imports_relatively(source, os.path.getmtime(source))
    except (OSError, SyntaxError, ValueError):
        return None
    if not relative:
        return None
    _check_top_level(cls)
    return f"{cls.__module__}:{cls.__qualname__}"


def _check_top_level(cls: type) -> None:
    """Recovery imports the class by its name from its module: refuse nested, local or renamed classes."""
    module = sys.modules.get(cls.__module__)
    if getattr(module, cls.__name__, None) is not cls:
        raise InvalidSaveInfoError(
            f"{cls.__qualname__} is not a top-level name of its module {cls.__module__!r} (a nested or local "
            "class, or one renamed after definition), so it could not be imported at recovery; define it at "
            "module level, or save with a factory: add_model_info(model_import='package.module:factory')")


def _checked_init_args(init_args: Any, target: Callable[..., Any]) -> Optional[dict]:
    """`init_args` if they are a JSON dict that the signature of `target` accepts; InvalidSaveInfoError otherwise."""
    if init_args is None:
        return None
    if not isinstance(init_args, dict) or not all(isinstance(name, str) for name in init_args):
        raise InvalidSaveInfoError(f"init_args must be a dict of keyword arguments, got {init_args!r:.80}; e.g. "
                                   "add_model_info(..., init_args={'num_classes': 10})")
    check_json_value(init_args, "init_args",
                     hint="pass objects the constructor needs through a factory function instead")
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return init_args
    try:
        signature.bind(**init_args)
    except TypeError as error:
        raise InvalidSaveInfoError(f"{getattr(target, '__qualname__', target)}{signature} does not accept init_args "
                                   f"{init_args!r:.200}: {error}; pass the keyword arguments it takes") from error
    return init_args
