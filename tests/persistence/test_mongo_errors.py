"""MongoDB errors in one short line: the host, the reason and what to check, never pymongo's dump of its topology
(about 700 characters for one unreachable server) and never the password of the URI.

The client gives up after mmlib.util.mongo.CONNECT_TIMEOUT_MS (5 s); these tests lower it to half a second.
"""

import socket

import pymongo
import pytest

from mmlib.errors import StoreUnavailableError
from mmlib.persistence import open_store
from mmlib.util import mongo
from mmlib.util.mongo import MongoService, short_reason


@pytest.fixture(autouse=True)
def quick_timeout(monkeypatch):
    monkeypatch.setattr(mongo, "CONNECT_TIMEOUT_MS", 500)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port():
    """A port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def _one_short_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and len(message) < 200, message
    assert "Topology" not in message and "configured timeouts" not in message, message
    return message


def test_an_unreachable_server_is_one_short_line_naming_the_host(closed_port):
    with pytest.raises(StoreUnavailableError) as raised:
        open_store(f"mongodb://127.0.0.1:{closed_port}/x")
    message = _one_short_line(raised.value)
    assert message.startswith(f"cannot reach MongoDB at 127.0.0.1:{closed_port}: connection refused; "), message
    assert "start the server" in message


def test_a_server_that_never_answers_times_out_in_one_short_line(silent_port):
    with pytest.raises(StoreUnavailableError) as raised:
        open_store(f"mongodb://127.0.0.1:{silent_port}/x")
    assert f"127.0.0.1:{silent_port}: timed out;" in _one_short_line(raised.value)


def test_the_password_of_the_uri_is_not_shown(closed_port):
    with pytest.raises(StoreUnavailableError) as raised:
        open_store(f"mongodb://alice:s3cret@127.0.0.1:{closed_port}/x")
    message = _one_short_line(raised.value)
    assert "s3cret" not in message and "alice" not in message and f"127.0.0.1:{closed_port}" in message


def test_an_operation_on_a_server_gone_meanwhile_is_one_short_line(closed_port):
    service = MongoService(f"127.0.0.1:{closed_port}", "x")  # pymongo connects lazily: opening does not fail
    with pytest.raises(StoreUnavailableError, match=f"^cannot reach MongoDB at 127.0.0.1:{closed_port}"):
        service.get_ids("models")
    with pytest.raises(StoreUnavailableError) as raised:
        service.save_dict({"a": 1}, "models")
    _one_short_line(raised.value)


def test_a_refused_operation_names_its_code_and_what_to_check():
    error = pymongo.errors.OperationFailure("Authentication failed.", code=18, details={"errmsg": "x" * 500})
    service = MongoService("db.example:27017", "x")
    with pytest.raises(StoreUnavailableError) as raised:
        with service.errors():
            raise error
    message = _one_short_line(raised.value)
    assert message == ("MongoDB at db.example:27017 refused the request: authentication failed (code 18); check the "
                       "user, password and roles in the URI"), message


@pytest.mark.parametrize("text, reason", [
    ("h:1: [Errno -2] Name or service not known (configured timeouts: 5.0ms), Timeout: 5s, Topology Description: "
     "<...>", "host name not found"),
    ("No replica set members match selector \"Primary()\", Timeout: 5s, Topology Description: <...>",
     "no replica set member is available"),
    ("h:1: something new " + "y" * 300, "something new " + "y" * 83 + "...")])
def test_short_reasons(text, reason):
    assert short_reason(pymongo.errors.PyMongoError(text)) == reason


def test_a_selection_that_gives_up_before_any_connection_attempt_ends_is_a_timeout():
    error = pymongo.errors.ServerSelectionTimeoutError(
        "No servers found yet, Timeout: 0.5s, Topology Description: <TopologyDescription id: 1, ...>")
    assert short_reason(error) == "timed out"
