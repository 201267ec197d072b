"""Model classes defined in a script's `__main__` or in a notebook cell are saved and recovered elsewhere.

A script runs in its own process and is deleted; another process, in another directory, recovers its models
with checks. Notebook cells are simulated as IPython registers them: each cell's source in `linecache` under an
`<ipython-input-...>` (or ipykernel temp file) name, its classes defined in the `__main__` module.
"""

import linecache
import os
import shutil
import subprocess
import sys
import textwrap
import types

import pytest
import torch

import mmlib
from mmlib.errors import InvalidSaveInfoError
from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment
from save_helpers import store_contents

SCRIPT = '''\
import sys

import torch
from torch import nn

from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService, WeightUpdateSaveService
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.track_env import track_current_environment

HIDDEN = 3


def scaled(x):
    return 2 * x


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, HIDDEN)

    def forward(self, x):
        return scaled(self.fc(x))


# Top-level code outside the main guard: it runs with the script, and must not run at recovery.
torch.manual_seed(0)
model = Tiny()
with open("ran.txt", "a") as marker:
    marker.write("trained\\n")


def save(service, base_model_id=None):
    builder = ModelSaveInfoBuilder().add_model_info(env=track_current_environment(), model=model,
                                                    base_model_id=base_model_id)
    return service.save_model(builder.build())


if __name__ == "__main__":
    service_class, store_dir, expected_file = sys.argv[1:]
    service = {"baseline": BaselineSaveService, "update": WeightUpdateSaveService}[service_class](
        *open_store(store_dir))
    probe = torch.arange(8.0).reshape(2, 4)
    expected = {}
    model_id = save(service)
    expected[model_id] = ({name: value.clone() for name, value in model.state_dict().items()}, model(probe))
    if service_class == "update":
        with torch.no_grad():
            model.fc.weight.add_(0.5)
        model_id = save(service, base_model_id=model_id)
        expected[model_id] = (model.state_dict(), model(probe))
    torch.save(expected, expected_file)
    print(" ".join(expected))
'''

RECOVER = '''\
import os
import sys

import torch

from mmlib.persistence import open_store
from mmlib.save import BaselineSaveService, WeightUpdateSaveService

service_class, store_dir, expected_file, class_name = sys.argv[1:5]
service = {"baseline": BaselineSaveService, "update": WeightUpdateSaveService}[service_class](*open_store(store_dir))
probe = torch.arange(8.0).reshape(2, 4)[:, :int(sys.argv[5])]
for model_id, (state, output) in torch.load(expected_file).items():
    model = service.recover_model(model_id, execute_checks=True).model
    assert type(model).__name__ == class_name and type(model).__module__.startswith("mmlib_code_"), type(model)
    recovered = model.state_dict()
    assert list(recovered) == list(state), (list(recovered), list(state))
    for name, tensor in state.items():
        assert recovered[name].dtype == tensor.dtype and torch.equal(recovered[name], tensor), name
    assert torch.equal(model(probe), output)
assert not os.path.exists("ran.txt"), "recovery ran the script's top-level code"
print("recovered", len(torch.load(expected_file)))
'''

CELL_HELPERS = '''\
import torch
from torch import nn

WIDTH = 3


def doubled(x):
    return 2 * x
'''

CELL_CLASS = '''\
get_ipython().run_line_magic("matplotlib", "inline")
class CellNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, WIDTH)

    def forward(self, x):
        return doubled(self.fc(x))

net = CellNet()
'''


def _env() -> dict:
    """The environment for a child process: it imports the mmlib this test process imports."""
    root = os.path.dirname(os.path.dirname(mmlib.__file__))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


def _python(cwd, *args) -> str:
    """Run `python args...` in `cwd`; its standard output."""
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=_env(), capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _recover_elsewhere(tmp_path, service_class: str, store_dir, expected_file, class_name: str,
                       inputs: int) -> None:
    """Recover every model of `expected_file` in another process and directory; compare weights and outputs."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "recover.py").write_text(RECOVER)
    count = len(torch.load(expected_file))
    out = _python(elsewhere, "recover.py", service_class, store_dir, expected_file, class_name, inputs)
    assert out.split() == ["recovered", str(count)]


@pytest.mark.parametrize("service_class, versions", [("baseline", 1), ("update", 2)])
def test_class_of_a_script_recovers_in_another_process_after_the_script_is_gone(tmp_path, service_class,
                                                                                 versions):
    script_dir = tmp_path / "project"
    script_dir.mkdir()
    (script_dir / "train.py").write_text(SCRIPT)
    store_dir, expected_file = tmp_path / "store", tmp_path / "expected.pt"

    model_ids = _python(script_dir, "train.py", service_class, store_dir, expected_file).split()
    assert len(model_ids) == versions
    assert (script_dir / "ran.txt").exists()
    shutil.rmtree(script_dir)

    _recover_elsewhere(tmp_path, service_class, store_dir, expected_file, "Tiny", 4)


def _run_cell(main: types.ModuleType, source: str, filename: str, monkeypatch) -> None:
    """Run a notebook cell as IPython does: its source (magics transformed) in linecache, run in `__main__`."""
    monkeypatch.setitem(linecache.cache, filename, (len(source), None, source.splitlines(keepends=True), filename))
    main.get_ipython = lambda: types.SimpleNamespace(run_line_magic=lambda *args: None)
    exec(compile(source, filename, "exec"), vars(main))  # noqa: S102 - the test plays the kernel; mmlib never execs


def test_class_of_a_notebook_cell_is_stored_from_its_cells(tmp_path, monkeypatch):
    main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    _run_cell(main, CELL_HELPERS, "/tmp/ipykernel_4242/1234567.py", monkeypatch)
    _run_cell(main, CELL_CLASS, "<ipython-input-2-5d2f0e0c1a2b>", monkeypatch)
    net = main.net
    service = BaselineSaveService(*open_store(str(tmp_path / "store")))
    model_id = service.save_model(ModelSaveInfoBuilder().add_model_info(
        env=track_current_environment(), model=net).build())
    probe = torch.arange(8.0).reshape(2, 4)[:, :2]  # as recover.py builds it
    expected_file = tmp_path / "expected.pt"
    torch.save({model_id: (net.state_dict(), net(probe))}, expected_file)

    restored = service.recover_model(model_id, execute_checks=True).model
    assert type(restored).__name__ == "CellNet" and type(restored) is not type(net)
    assert all(torch.equal(restored.state_dict()[name], value) for name, value in net.state_dict().items())
    monkeypatch.undo()  # the kernel is gone: no cell source left in linecache, the real __main__ back
    _recover_elsewhere(tmp_path, "baseline", tmp_path / "store", expected_file, "CellNet", 2)


def _class_compiled_from_a_string() -> type:
    """A class of `__main__` whose code came from a string that no file or linecache entry holds."""
    namespace = {"__name__": "__main__", "torch": torch}
    exec(compile("class Hidden(torch.nn.Module):\n    def forward(self, x):\n        return x\n",  # noqa: S102
                 "<string>", "exec"), namespace)
    return namespace["Hidden"]


@pytest.mark.parametrize("make_class", [
    lambda: type("Dynamic", (torch.nn.Module,), {"__module__": "__main__"}),
    _class_compiled_from_a_string,
], ids=["type-call", "compiled-string"])
def test_class_of_main_without_any_source_is_refused_with_the_fix(tmp_path, make_class):
    file_service, dict_service = open_store(str(tmp_path / "store"))
    service = BaselineSaveService(file_service, dict_service)
    before = store_contents(file_service, dict_service)
    with pytest.raises(InvalidSaveInfoError, match=r"cannot find the source.*add_model_info\(code=\.\.\.\)"):
        service.save_model(ModelSaveInfoBuilder().add_model_info(
            env=track_current_environment(), model=make_class()()).build())
    assert store_contents(file_service, dict_service) == before


def test_class_of_a_cell_using_a_value_no_code_rebuilds_is_refused(tmp_path, monkeypatch):
    main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    cell = textwrap.dedent('''\
        import torch
        OFFSET = torch.ones(2)

        class Shifted(torch.nn.Module):
            def forward(self, x):
                return x + OFFSET
        ''')
    _run_cell(main, cell, "<ipython-input-7-0123456789ab>", monkeypatch)
    file_service, dict_service = open_store(str(tmp_path / "store"))
    before = store_contents(file_service, dict_service)
    with pytest.raises(InvalidSaveInfoError, match=r"'OFFSET', a Tensor.*add_model_info\(code=\.\.\.\)"):
        BaselineSaveService(file_service, dict_service).save_model(ModelSaveInfoBuilder().add_model_info(
            env=track_current_environment(), model=main.Shifted()).build())
    assert store_contents(file_service, dict_service) == before
