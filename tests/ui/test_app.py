"""The web view's pages and error paths, through starlette's TestClient (no socket): the models table (sort, filter,
pages), lineage graphs, version pages, diffs, damaged entries on every backend, escaping, and `mmlib ui` itself."""

import html
import re
import subprocess
import sys
import urllib.request

import pytest
from starlette.testclient import TestClient

import mmlib
from mmlib.ui import create_app, data
from mmlib.ui.graph import MAX_RADIUS
from mmlib.ui.server import LOOPBACK_NAMES, shown_location
from ui_stores import HOSTILE_METRIC, HOSTILE_TAG, build_small

_ROW = re.compile(r'<tr class="[^"]*" data-id="([0-9a-f]{64})"')
_NODE = re.compile(r'<a href="/version/([0-9a-f]{64})" class="node"[^>]*>\s*<circle cx="[^"]*" cy="[^"]*" '
                   r'r="([0-9.]+)" class="([a-z ]+)"')
_SERVE_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def small_location(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("ui") / "store")


@pytest.fixture(scope="module")
def small(small_location):
    """(store, BuiltStore) of `build_small` on an embedded store."""
    store = mmlib.open_store(small_location)
    return store, build_small(store)


@pytest.fixture(scope="module")
def client(small):
    return TestClient(create_app(small[0]))


def _rows(page: str) -> list[str]:
    """The model ids of the models table's rows, in order."""
    return _ROW.findall(page)


def _ids(built, *refs: str) -> list[str]:
    return [built.ids[ref] for ref in refs]


@pytest.fixture(params=["sqlite+files", "mongodb+gridfs", "mongodb+s3"])
def any_backend(request, tmp_path):
    """A fresh store on each backend: SQLite + files, MongoDB + GridFS, MongoDB + S3 blobs."""
    if request.param == "sqlite+files":
        return mmlib.open_store(str(tmp_path / "store"))
    uri, name = request.getfixturevalue("mongo_database")
    blob_dir = request.getfixturevalue("s3_test_location") if request.param == "mongodb+s3" else None
    return mmlib.open_store(f"{uri}/{name}", blob_dir=blob_dir)


def test_every_page_works_and_shows_damage_on_every_backend(any_backend):
    built = build_small(any_backend)
    client = TestClient(create_app(any_backend))
    models = client.get("/")
    assert models.status_code == 200
    assert set(_rows(models.text)) == {*built.ids.values(), built.lost}  # broken: in the damaged list
    assert re.search(rf'<tr class="damaged" data-id="{built.lost}">', models.text)
    assert f'href="/version/{built.broken}"' in models.text.partition('id="damaged-models"')[2]
    version = client.get("/version/detector:v2")
    assert version.status_code == 200 and version.url.path == f"/version/{built.ids['detector:v2']}"
    assert "1 changed, 0 added, 0 removed" in version.text
    lineage = client.get("/names/detector")
    assert [node[0] for node in _NODE.findall(lineage.text)] == _ids(built, "detector:v1", "detector:v2",
                                                                     "detector:v3")
    broken = client.get(f"/version/{built.broken}")
    assert broken.status_code == 200 and "DAMAGED" in broken.text and "teleported" in broken.text
    lost = client.get(f"/version/{built.lost}")
    assert lost.status_code == 200 and "Damaged:" in lost.text and "missing" in lost.text
    assert client.get(f"/diff?a=detector:v1&b={built.lost}").status_code == 200  # documents only: no weights read
    assert client.get(f"/diff?a=detector:v1&b={built.lost}&values=1").status_code == 422


def test_the_table_lists_names_versions_aliases_tags_metrics_approach_size_and_time(small, client):
    store, built = small
    page = client.get("/").text
    assert _rows(page)[:2] == [built.lost, built.ids["unnamed"]]  # newest first
    row = page.partition(f'data-id="{built.ids["detector:v2"]}"')[2].partition("</tr>")[0]
    assert '<a href="/names/detector">detector</a>' in row and ">v2</a>" in row
    assert '<span class="badge">production</span>' in row and "data=coco" in row and "val_acc=0.84" in row
    assert '<td class="approach update">update</td>' in row and re.search(r'<td class="num">[0-9.]+ (B|KiB)</td>', row)
    assert mmlib.get("detector:v2", store).created[:10] in row


def test_user_data_is_escaped(small, client):
    _, built = small
    for path in ("/", f"/version/{built.ids['detector:v1']}", "/names/detector", "/diff?a=detector:v1&b=detector"):
        page = client.get(path).text
        assert "<script" not in page and "<img" not in page
    page = html.unescape(client.get("/").text)
    assert HOSTILE_TAG in page and HOSTILE_METRIC in page  # shown as text


def test_sorting_filtering_and_pages(small, client):
    _, built = small
    detector = _ids(built, "detector:v1", "detector:v3", "detector:v2")  # by val_acc, ascending
    assert _rows(client.get("/?sort=metrics.val_acc").text)[:3] == detector
    assert _rows(client.get("/?sort=-metrics.val_acc").text)[:3] == detector[::-1]
    assert _rows(client.get("/?name=detector&sort=number").text) == _ids(built, "detector:v1", "detector:v2",
                                                                          "detector:v3")
    assert _rows(client.get("/?q=PRODUCTION").text) == _ids(built, "detector:v2")  # aliases, any case
    assert _rows(client.get("/?q=data=imagenet").text) == _ids(built, "other:v1")  # tags as KEY=VALUE
    assert _rows(client.get("/?q=nothing-like-this").text) == []
    snapshots = _rows(client.get("/?approach=snapshot").text)
    assert built.ids["detector:v1"] in snapshots and built.ids["detector:v2"] not in snapshots
    assert built.lost in snapshots  # a snapshot whose weights are gone: filtered by how it was stored
    by_size = _rows(client.get("/?sort=size&name=detector").text)
    assert by_size[-1] == built.ids["detector:v1"]  # the snapshot adds the most
    first, second = (client.get(f"/?name=detector&sort=number&per_page=2&page={page}").text for page in (1, 2))
    assert _rows(first) + _rows(second) == _ids(built, "detector:v1", "detector:v2", "detector:v3")
    assert 'rel="next" href="?name=detector&amp;sort=number&amp;page=2&amp;per_page=2"' in first
    assert 'rel="prev"' in second and "page 2 of 2" in second
    assert _rows(client.get("/?name=detector&sort=number&per_page=2&page=9").text) == _ids(built, "detector:v3")
    sortable = client.get("/?sort=created").text
    assert '<a href="?">Created (UTC)</a> ▲' in sortable and 'value="metrics.val_acc"' in sortable


@pytest.mark.parametrize("query, complaint", [("sort=colour", "cannot sort by"), ("page=abc", "page must be"),
                                              ("page=0", "page must be"), ("per_page=5000", "at most")])
def test_a_bad_table_query_is_a_400_page(client, query, complaint):
    response = client.get(f"/?{query}")
    assert response.status_code == 400 and complaint in response.text and "Bad request" in response.text


def test_the_lineage_of_a_name_draws_versions_sized_by_bytes_colored_by_approach(small, client):
    _, built = small
    page = client.get("/names/detector").text
    nodes = _NODE.findall(page)
    assert [(model_id, classes) for model_id, _, classes in nodes] == [
        (built.ids["detector:v1"], "snapshot"), (built.ids["detector:v2"], "update"),
        (built.ids["detector:v3"], "update")]
    radii = [float(radius) for _, radius, _ in nodes]
    assert radii[0] > radii[1] and radii[0] == pytest.approx(MAX_RADIUS)
    assert page.count('<path d="M') == 2 and '<tspan class="alias">[production]</tspan>' in page
    assert '<tspan class="alias">[latest]</tspan>' in page


def test_the_lineage_of_a_model_redirects_to_its_full_id_and_marks_it(small, client):
    _, built = small
    response = client.get("/lineage/detector:production")
    assert response.status_code == 200 and response.url.path == f"/lineage/{built.ids['detector:v2']}"
    nodes = _NODE.findall(response.text)
    assert [model_id for model_id, _, _ in nodes] == _ids(built, "detector:v1", "detector:v2", "detector:v3")
    assert [classes for _, _, classes in nodes][1] == "update focus"
    redirect = client.get(f"/version/{built.ids['detector:v3'][:10]}", follow_redirects=False)
    assert redirect.status_code == 302 and redirect.headers["location"] == f"/version/{built.ids['detector:v3']}"


def test_a_version_page_shows_metadata_environment_lineage_sizes_and_changes(small, client):
    store, built = small
    page = client.get(f"/version/{built.ids['detector:v2']}").text
    metadata = page.partition('id="metadata"')[2].partition("</table>")[0]
    assert built.ids["detector:v2"] in metadata and "detector v2" in metadata and built.ids["detector:v1"] in metadata
    assert "val_acc=0.84" in metadata and "data=coco" in metadata
    environment = page.partition('id="environment"')[2].partition("</table>")[0]
    assert "python_version" in environment and sys.version.split()[0] in environment
    chain = page.partition('id="lineage-chain"')[2].partition("</table>")[0]
    assert re.findall(r'href="/version/([0-9a-f]{64})">([^<]+)</a>', chain) == [
        (built.ids["detector:v2"], "detector:v2"), (built.ids["detector:v1"], "detector:v1")]
    sizes = page.partition('id="sizes"')[2].partition("</table>")[0]
    assert "recover_info" in sizes and "update" in sizes and 'class="indent-1"' in sizes
    changes = page.partition('id="base-diff"')[2].partition("</table>")[0]
    assert re.findall(r'<td class="mono">([^<]+)</td>', changes) == ["fc.weight"]
    assert '<option value="detector:v3">' in page and 'action="/diff"' in page
    root = client.get(f"/version/{built.ids['detector:v1']}").text
    assert "A root: it has no base." in root and 'id="base-diff"' not in root


def test_the_diff_page_lists_changes_and_measures_them(small, client):
    store, built = small
    page = client.get("/diff?a=detector:v1&b=detector:v3").text
    assert "1 changed, 0 added, 0 removed" in page and "no weights were loaded" in page
    assert re.findall(r'<td class="mono">([^<]+)</td>', page) == ["fc.weight"] and "Max abs" not in page
    measured = client.get("/diff?a=detector:v1&b=detector:v3&values=1").text
    expected = mmlib.diff("detector:v1", "detector:v3", store, values=True).changes[0]
    cells = re.findall(r'<td class="num">([^<]+)</td>', measured)
    assert cells == [f"{figure:.4g}" for figure in (expected.max_abs, expected.mean_abs, expected.max_rel,
                                                    expected.mean_rel)]
    assert "Identical" in client.get("/diff?a=detector:v2&b=detector:production").text


@pytest.mark.parametrize("path, status, complaint", [
    ("/version/detector:v9", 404, "detector:v9 does not exist"),
    ("/version/0123", 404, "no model with id"),
    ("/version/not%20a%20ref", 404, "no model with id"),
    ("/lineage/nothing", 404, "no model"),
    ("/names/nothing", 404, "no version of 'nothing'"),
    ("/names/bad%20name", 400, "is not valid"),
    ("/diff?a=detector:v1", 400, "a diff needs two models"),
    ("/diff?a=detector:v1&b=nothing:v1", 404, "nothing"),
    ("/no/such/page", 404, "there is no page at /no/such/page"),
])
def test_errors_render_pages_with_their_status(client, path, status, complaint):
    response = client.get(path)
    assert response.status_code == status and response.headers["content-type"].startswith("text/html")
    assert complaint in html.unescape(response.text) and "Traceback" not in response.text


def test_damaged_entries_show_as_damaged(small, client):
    _, built = small
    for path in (f"/version/{built.broken}", f"/lineage/{built.broken}"):
        response = client.get(path)
        assert response.status_code == 200 and 'id="damage"' in response.text and "DAMAGED" in response.text
    name = client.get("/names/broken")
    assert name.status_code == 200 and re.search(rf'href="/version/{built.broken}" class="node".*?class="damaged"',
                                                 name.text, re.S)
    lost_name = client.get("/names/lost")
    assert lost_name.status_code == 200 and 'class="damaged"' in lost_name.text and "DAMAGED:" in lost_name.text
    models = client.get("/").text
    assert "2 damaged</a>" not in models and "1 damaged</a>" in models  # the broken document; the lost blob is a row


def test_an_unexpected_failure_is_a_page_not_a_traceback(small, client, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(data, "table_page", fail)
    response = client.get("/")
    assert response.status_code == 500 and "disk on fire" in response.text and "Traceback" not in response.text


def test_read_only_and_self_contained(small, client):
    _, built = small
    assert client.post("/").status_code == 405 and client.delete(f"/version/{built.ids['detector:v1']}").status_code \
        == 405
    for path in ("/", "/names/detector", f"/version/{built.ids['detector:v2']}", "/diff?a=detector:v1&b=detector"):
        response = client.get(path)
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert response.headers["referrer-policy"] == "no-referrer"
        assert not re.search(r'(src|href|action)="(https?:)?//', response.text)  # no assets or links elsewhere


def test_only_this_machine_names_a_loopback_view(small):
    app = create_app(small[0], allowed_hosts=LOOPBACK_NAMES)
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
        assert TestClient(app).get("/", headers={"host": host}).status_code == 200
    refused = TestClient(app).get("/", headers={"host": "attacker.example:8000"})
    assert refused.status_code == 400 and "unknown host" in refused.text


def test_a_uri_password_is_not_shown():
    assert shown_location("mongodb://ann:secret@db.example:27017/team") == "mongodb://ann:***@db.example:27017/team"
    assert shown_location("./models") == "./models"


def test_the_command_serves_the_view_and_warns_when_exposed(small, small_location):
    for extra, warned in (([], False), (["--host", "0.0.0.0"], True)):
        command = [sys.executable, "-m", "mmlib", "--store", small_location, "ui", "--port", "0", *extra]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = process.stdout.readline()
            url = re.search(r"at (http://\S+/)", line).group(1).replace("0.0.0.0", "127.0.0.1")
            with urllib.request.urlopen(url, timeout=_SERVE_TIMEOUT_S) as response:
                assert response.status == 200 and "detector" in response.read().decode()
        finally:
            process.terminate()
            _, err = process.communicate(timeout=_SERVE_TIMEOUT_S)
        assert ("no authentication" in err) is warned, err
