"""Stored code is imported with importlib under unique names; nothing else is ever run."""

import concurrent.futures
import threading

import pytest

from mmlib.errors import UnsafeCodeError
from mmlib.util.init_from_file import create_object, create_object_with_parameters, create_type


@pytest.mark.parametrize("import_cmd", [
    "import os; os.system('touch {marker}')",
    "__import__('os').system('touch {marker}')",
    "from os import system\nsystem('touch {marker}')",
    "import os as x; x.system('touch {marker}')",
])
def test_import_cmd_that_is_not_a_plain_import_runs_nothing(tmp_path, import_cmd):
    marker = tmp_path / "x"
    with pytest.raises(UnsafeCodeError, match="only 'from package.module import Name'"):
        create_object_with_parameters("Anything", {}, import_cmd=import_cmd.format(marker=marker))
    assert not marker.exists()


@pytest.mark.parametrize("class_name", ["A;B", "A()", "os.system('x')", "A B", ""])
def test_class_names_must_be_identifiers(tmp_path, class_name):
    code = tmp_path / "m.py"
    code.write_text("class A:\n    pass\n")
    with pytest.raises(UnsafeCodeError):
        create_object(str(code), class_name)


def test_plain_imports_and_json_arguments():
    parsed = create_object_with_parameters("OrderedDict", {"a": "1", "b": 2},
                                           import_cmd="from collections import OrderedDict")
    assert parsed == {"a": "1", "b": 2}
    counter = create_object_with_parameters("collections.Counter", {}, import_cmd="import collections")
    assert counter == {}


def test_two_files_with_one_name_do_not_collide(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "net.py").write_text("class Net:\n    kind = 'a'\n")
    (tmp_path / "b" / "net.py").write_text("class Net:\n    kind = 'b'\n")
    assert create_type(str(tmp_path / "a" / "net.py"), "Net").kind == "a"
    assert create_type(str(tmp_path / "b" / "net.py"), "Net").kind == "b"


def test_reference_objects_are_passed_by_name(tmp_path):
    code = tmp_path / "holder.py"
    code.write_text("class Holder:\n    def __init__(self, size, inner):\n"
                    "        self.size, self.inner = size, inner\n")
    holder = create_object_with_parameters("Holder", {"size": 3}, code_file=str(code),
                                           init_ref_type_args={"inner": [1]})
    assert (holder.size, holder.inner) == (3, [1])


def test_threads_importing_one_stored_code_file_at_once_all_get_it_whole(tmp_path):
    code = tmp_path / "slow_model.py"
    code.write_text("import time\ntime.sleep(0.3)\n\nclass SlowNet:\n    pass\n")
    barrier = threading.Barrier(4)

    def load():
        barrier.wait()
        return create_type(str(code), "SlowNet")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        classes = list(pool.map(lambda _: load(), range(4)))
    assert len(set(classes)) == 1 and classes[0].__name__ == "SlowNet"
