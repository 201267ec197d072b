"""Where a snapshot's model code comes from: a code file to store, or an import path, plus constructor arguments.

`resolve_model_source` decides it once per save, from the sources listed in its docstring, and refuses a
source that recovery could not use (a nested class, init_args the constructor rejects) before anything is
written.
"""

import ast
import builtins
import functools
import inspect
import linecache
import logging
import os
import symtable
import sys
from types import ModuleType
from typing import Any, Callable, NamedTuple, Optional

from mmlib.errors import InvalidSaveInfoError
from mmlib.persistence.base import FileReference
from mmlib.save_info import ModelSaveInfo
from mmlib.schema.recover_info import FullModelRecoverInfo
from mmlib.schema.restorable_object import check_json_value, source_file
from mmlib.util.hash import new_hasher
from mmlib.util.init_from_file import (CODE_MODULE_PREFIX, check_class_name, create_type, distribution_of,
                                      import_object, stored_code_of)

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
    6. the source file of the model's class; for a class of `__main__` (a script, a notebook cell), its own
       definition with what it uses, written as a module by `main_class_code`;
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
    main_code = main_class_code(cls)
    if main_code is not None:
        path = _stored_code_copy(code_dir, *main_code)
        target = _extracted_class(path, cls)
        return ModelSource(FileReference(path=path), None, _checked_init_args(init_args, target), None, target)
    if root is not None:
        return _code_source(FileReference(reference_id=root.model_code.reference_id), init_args, cls)
    raise InvalidSaveInfoError(
        f"cannot find the source of {cls.__qualname__} (defined in {cls.__module__!r}, and no file or notebook "
        "cell holds its class statement); move the class into a .py module or pass its file with "
        "add_model_info(code=...)")


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


def _check_top_level(cls: type, namespace: Optional[dict[str, Any]] = None) -> None:
    """Recovery imports the class by its name from its module (whose globals `namespace` gives, by default those
    of `sys.modules[cls.__module__]`): refuse nested, local or renamed classes."""
    if namespace is None:
        namespace = vars(sys.modules[cls.__module__]) if cls.__module__ in sys.modules else {}
    if namespace.get(cls.__name__) is not cls:
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


_LITERAL_TYPES = (bool, int, float, complex, str, bytes, tuple, list, dict, set, type(None))


class _Definition(NamedTuple):
    """The source of a top-level `class` or `def` statement, and the `from __future__` imports of its file."""

    source: str
    future: tuple[str, ...]


def main_class_code(cls: type) -> Optional[tuple[str, bytes]]:
    """`(<Class>.py, code)` for a class defined in `__main__` (a script or notebook cell); None for other classes
    and for one whose class statement no file or cell holds.

    The code is a module of the class statement and, as `__main__` binds them now, what it uses: the `__main__`
    classes and functions (their statements, recursively), imports of the modules, classes and functions of other
    modules, and literal constants. It holds nothing else of the script, so importing it at recovery never runs
    the script's training or saving. Sources are read through `linecache`, where IPython keeps each cell's.
    InvalidSaveInfoError for a class that is not a top-level name of `__main__`, or that uses a value no code
    can rebuild.
    """
    if cls.__module__ != "__main__":
        return None
    namespace = _main_namespace(cls)
    if cls.__qualname__ != cls.__name__:
        _check_top_level(cls, namespace)
    if _definition(cls) is None:
        return None
    _check_top_level(cls, namespace)
    writer = _ModuleWriter(cls, namespace)
    writer.add_name(cls.__name__)
    return f"{cls.__name__}.py", writer.code().encode()


class _ModuleWriter:
    """Collects the module `main_class_code` writes for a class of `__main__`: each name it uses, bound once."""

    def __init__(self, cls: type, namespace: dict[str, Any]) -> None:
        self._cls = cls
        self._namespace = namespace
        self._bound: dict[str, Any] = {}
        self._future: set[str] = set()
        self._imports: set[str] = set()
        self._constants: dict[str, str] = {}
        self._definitions: list[str] = []
        self._defined: list[Any] = []

    def add_name(self, name: str) -> None:
        """Write what binds `name` in `__main__`, after what that uses."""
        if name.startswith("__") and name.endswith("__"):  # set by the import system on every module
            return
        if name not in self._namespace:
            if not hasattr(builtins, name):
                logger.warning("%s uses %s, which __main__ does not define; the code stored for it leaves it "
                               "undefined too", self._cls.__qualname__, name)
            return
        value = self._namespace[name]
        if (name in vars(builtins) and vars(builtins)[name] is value) or not self._bind(name, value):
            return
        if inspect.ismodule(value):
            self._imports.add(self._module_import(name, value))
        elif (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ == "__main__":
            self._add_definition(value)
            if value.__name__ != name:
                self._definitions.append(f"{name} = {value.__name__}\n")
        elif (line := _import_line(name, value)) is not None:
            self._imports.add(line)
        elif (literal := _literal(value)) is not None:
            self._constants[name] = f"{name} = {literal}\n"
        else:
            raise self._refusal(f"uses {name!r}, a {type(value).__name__} that no code can rebuild (only modules, "
                                "classes and functions importable by name, classes and functions of the script or "
                                "notebook, and literal constants can be stored)")

    def code(self) -> str:
        """The module's source: docstring, `__future__` imports, imports, constants, then the definitions."""
        parts = [f'"""{self._cls.__name__} and what it uses, from the script or notebook that defined it (written by '
                 'mmlib when saving)."""\n', *sorted(self._future), "\n", *sorted(self._imports)]
        if self._constants:
            parts += ["\n", *(self._constants[name] for name in sorted(self._constants))]
        for definition in self._definitions:
            parts += ["\n\n", definition]
        return "".join(parts)

    def _bind(self, name: str, value: Any) -> bool:
        """Record that the module binds `name` to `value`; False if it does already, InvalidSaveInfoError if it binds
        another object to it."""
        if name not in self._bound:
            self._bound[name] = value
            return True
        if self._bound[name] is value:
            return False
        raise self._refusal(f"uses two different objects named {name!r} (one of them by another name in __main__)")

    def _add_definition(self, value: Any) -> None:
        """Write the statement defining the class or function `value` of `__main__`, after what it uses."""
        if any(done is value for done in self._defined):
            return
        self._defined.append(value)
        self._bind(value.__name__, value)
        definition = _definition(value)
        if definition is None:
            raise self._refusal(f"uses {value.__qualname__} of __main__, whose source cannot be found")
        self._future.update(definition.future)
        for name in sorted(_global_names(definition.source)):
            self.add_name(name)
        self._definitions.append(definition.source)

    def _module_import(self, name: str, module: ModuleType) -> str:
        """`import module as name` for a module that recovery can import by its name."""
        module_name = module.__name__
        if module_name == "__main__" or module_name.startswith(CODE_MODULE_PREFIX) or \
                sys.modules.get(module_name) is not module:
            raise self._refusal(f"uses the module {name!r} ({module_name}), which cannot be imported by its name")
        return f"import {module_name}\n" if name == module_name else f"import {module_name} as {name}\n"

    def _refusal(self, problem: str) -> InvalidSaveInfoError:
        """The error refusing to save a class of `__main__` that `problem` stops from being written as code."""
        return InvalidSaveInfoError(f"{self._cls.__qualname__} (defined in __main__) {problem}; move the class into a "
                                    ".py module or pass its file with add_model_info(code=...)")


def _main_namespace(cls: type) -> dict[str, Any]:
    """The globals that the class of `__main__` reads: those of its methods, else those of `sys.modules['__main__']`."""
    functions = _class_functions(cls)
    if functions:
        return functions[0].__globals__
    main = sys.modules.get("__main__")
    return vars(main) if main is not None else {}


def _class_functions(cls: type) -> list[Any]:
    """The functions written in the body of `cls`: methods, static and class methods, property accessors."""
    found = []
    for value in vars(cls).values():
        candidates = (value.fget, value.fset, value.fdel) if isinstance(value, property) else \
            (getattr(value, "__func__", value),)
        for candidate in candidates:
            if not inspect.isfunction(candidate):
                continue
            try:
                function = inspect.unwrap(candidate)
            except ValueError:  # a __wrapped__ cycle
                continue
            if inspect.isfunction(function) and function.__qualname__.startswith(cls.__qualname__ + "."):
                found.append(function)
    return found


def _code_locations(value: Any) -> list[tuple[str, Optional[int]]]:
    """(file name, line) pairs where the class or function `value` may be defined; a line of None: anywhere."""
    if inspect.isfunction(value):
        code = inspect.unwrap(value).__code__
        return [(code.co_filename, code.co_firstlineno)]
    locations: list[tuple[str, Optional[int]]] = [
        (function.__code__.co_filename, function.__code__.co_firstlineno) for function in _class_functions(value)]
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if isinstance(main_file, str):
        first_line = getattr(value, "__firstlineno__", None)  # Python 3.13+
        locations.append((main_file, first_line if isinstance(first_line, int) else None))
    return locations


def _first_line(node: ast.stmt) -> int:
    """The first line of a statement, its decorators included."""
    return min([node.lineno, *(decorator.lineno for decorator in getattr(node, "decorator_list", ()))])


def _definition(value: Any) -> Optional[_Definition]:
    """The top-level `class` or `def` statement (decorators included) defining `value`, read through linecache, or
    None where no file or notebook cell holds it (the last such statement where no line number tells)."""
    kinds: tuple[type, ...] = (ast.ClassDef,) if inspect.isclass(value) else (ast.FunctionDef, ast.AsyncFunctionDef)
    for filename, line in _code_locations(value):
        lines = linecache.getlines(filename)
        try:
            tree = ast.parse("".join(lines), filename)
        except (SyntaxError, ValueError):
            continue
        nodes = [node for node in tree.body if isinstance(node, kinds) and getattr(node, "name", None) == value.__name__
                 and (line is None or _first_line(node) <= line <= (node.end_lineno or node.lineno))]
        if nodes:
            node = nodes[-1]
            future = tuple(ast.unparse(statement) + "\n" for statement in tree.body
                           if isinstance(statement, ast.ImportFrom) and statement.module == "__future__")
            return _Definition("".join(lines[_first_line(node) - 1:node.end_lineno]).rstrip() + "\n", future)
    return None


def _global_names(source: str) -> set[str]:
    """The module-level names a top-level statement reads: in its own line (bases, decorators, defaults) or in
    the class bodies and functions within it."""
    table = symtable.symtable(source, "<definition>", "exec")
    names = {symbol.get_name() for symbol in table.get_symbols()
             if symbol.is_referenced() and not (symbol.is_assigned() or symbol.is_imported())}
    pending = list(table.get_children())
    while pending:
        child = pending.pop()
        names.update(symbol.get_name() for symbol in child.get_symbols()
                     if symbol.is_global() and (symbol.is_referenced() or symbol.is_declared_global()))
        pending.extend(child.get_children())
    return names


def _import_line(name: str, value: Any) -> Optional[str]:
    """`from module import attribute as name` for a class, function or other object that its module holds under
    its own name, so recovery can import it; None otherwise."""
    module_name = getattr(value, "__module__", None)
    if not isinstance(module_name, str) or module_name == "__main__" or module_name.startswith(CODE_MODULE_PREFIX):
        return None
    module = sys.modules.get(module_name)
    for attribute in (getattr(value, "__qualname__", None), getattr(value, "__name__", None)):
        if isinstance(attribute, str) and attribute.isidentifier() and getattr(module, attribute, None) is value:
            return f"from {module_name} import {attribute}\n" if attribute == name else \
                f"from {module_name} import {attribute} as {name}\n"
    return None


def _literal(value: Any) -> Optional[str]:
    """The Python literal writing `value` (a number, string, bytes, None or container of them), or None."""
    if type(value) not in _LITERAL_TYPES:
        return None
    text = repr(value)
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return text if same else None


def _extracted_class(path: str, cls: type) -> type:
    """The class of `cls`'s name that the module `main_class_code` wrote defines, imported as recovery will."""
    try:
        return create_type(path, cls.__name__)
    except Exception as error:  # noqa: BLE001 - whatever stops the written module from importing stops recovery
        raise InvalidSaveInfoError(f"the code written for {cls.__qualname__} of __main__ does not import "
                                   f"({type(error).__name__}: {error}); move the class into a .py module or pass "
                                   "its file with add_model_info(code=...)") from error
