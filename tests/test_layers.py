"""Layers point down: the stores (`mmlib.persistence`) and the helpers (`mmlib.util`) import nothing above them,
so a backend can be used, tested and replaced without the schema or the save approaches."""

import ast
from pathlib import Path

import pytest

import mmlib

PACKAGE = Path(mmlib.__file__).parent
BELOW = {  # what each layer may import from mmlib, besides itself
    "util": {"mmlib.errors", "mmlib.constants"},
    "persistence": {"mmlib.errors", "mmlib.constants", "mmlib.util"},
}


def _mmlib_imports(path: Path) -> set[str]:
    """The mmlib modules a file imports, absolute imports and imports inside functions alike."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module)
    return {name for name in imported if name == "mmlib" or name.startswith("mmlib.")}


@pytest.mark.parametrize("layer", sorted(BELOW))
def test_a_layer_imports_only_itself_and_the_layers_below_it(layer):
    allowed = BELOW[layer] | {f"mmlib.{layer}"}
    upward = {f"{path.relative_to(PACKAGE)}: {name}" for path in sorted((PACKAGE / layer).rglob("*.py"))
              for name in _mmlib_imports(path)
              if not any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)}
    assert not upward, f"imports above the {layer} layer: {sorted(upward)}"
