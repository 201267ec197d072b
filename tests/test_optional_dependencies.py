"""mmlib where its optional dependencies are not installed: the embedded store needs neither pymongo nor Pillow,
and only the conformance suites (mmlib.testing.stores) need pytest.

Each check runs in a fresh process whose `sitecustomize` makes importing pymongo (with the bson and gridfs
packages it installs), Pillow and pytest fail as it does where they are missing.
"""

import json
import os
import subprocess
import sys
import textwrap

from mmlib.cli import EXIT_OK, EXIT_UNAVAILABLE

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
_TIMEOUT_S = 120
_MISSING = ("pymongo", "bson", "gridfs", "PIL", "pytest")

_SITECUSTOMIZE = f'''
import importlib.abc
import sys


class _Uninstalled(importlib.abc.MetaPathFinder):
    """Importing these packages fails as it does where they are not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {_MISSING!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _Uninstalled())
'''

# The only modules that import pymongo, Pillow, pytest or a training framework (`__main__` runs the command instead).
_NEEDS_OPTIONAL = ("mmlib.__main__", "mmlib.util.mongo", "mmlib.persistence._mongo", "mmlib.persistence._gridfs",
                   "mmlib.demo.image_classification", "mmlib.demo.image_data", "mmlib.testing.stores",
                   "mmlib.integrations.lightning", "mmlib.integrations.transformers")

# Imports every other module, saves and recovers a model on the embedded store, then names a MongoDB store;
# prints what it saw as JSON.
_CHILD = textwrap.dedent('''
    import importlib
    import json
    import pkgutil
    import sys

    import mmlib
    for module in pkgutil.walk_packages(mmlib.__path__, "mmlib."):
        if module.name not in %r:
            importlib.import_module(module.name)

    from mmlib.equal import model_equal
    from mmlib.errors import StoreUnavailableError
    from mmlib.persistence import open_store
    from mmlib.save import BaselineSaveService
    from save_helpers import save_info
    from tiny_models import TinyNet, tiny_input

    service = BaselineSaveService(*open_store(sys.argv[1]))
    model = TinyNet()
    model_id = service.save_model(save_info(model))
    recovered = service.recover_model(model_id, execute_checks=True).model
    try:
        open_store("mongodb://127.0.0.1:1/mmlib")
        mongo_error = None
    except StoreUnavailableError as error:
        mongo_error = str(error)
    print(json.dumps({"model_id": model_id, "equal": model_equal(model, recovered, tiny_input),
                      "mongo_error": mongo_error,
                      "imported": sorted(name for name in sys.modules if name.partition(".")[0] in %r)}))
''' % (_NEEDS_OPTIONAL, _MISSING))


def _environment(tmp_path) -> dict:
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = os.pathsep.join(filter(None, [str(site_dir), _TESTS_DIR, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _run(args: list, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=_TIMEOUT_S)


def test_the_blocker_works(tmp_path):
    process = _run(["-c", "import pymongo"], _environment(tmp_path))
    assert process.returncode != 0 and "No module named 'pymongo'" in process.stderr


def test_embedded_store_and_command_without_pymongo_or_pillow(tmp_path):
    env, location = _environment(tmp_path), str(tmp_path / "store")
    child = _run(["-c", _CHILD, location], env)
    assert child.returncode == 0, child.stderr
    seen = json.loads(child.stdout)
    assert seen["equal"] and seen["imported"] == []
    assert "pip install 'mmlib[mongo]'" in seen["mongo_error"]

    listing = _run(["-m", "mmlib", "--store", location, "ls"], env)
    assert listing.returncode == EXIT_OK, listing.stderr
    assert seen["model_id"][:12] in listing.stdout

    mongo = _run(["-m", "mmlib", "--store", "mongodb://127.0.0.1:1/mmlib", "ls"], env)
    assert mongo.returncode == EXIT_UNAVAILABLE
    assert "pip install 'mmlib[mongo]'" in mongo.stderr and "Traceback" not in mongo.stderr
