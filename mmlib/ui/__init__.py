"""`mmlib ui`: a local, read-only web view of a store (the `ui` extra: starlette, uvicorn, jinja2).

`create_app(store)` gives the ASGI app (tests drive it with starlette's TestClient); `serve(store)` runs it with
uvicorn, bound to 127.0.0.1 unless told otherwise.
"""

from mmlib.ui.app import create_app
from mmlib.ui.server import serve

__all__ = ["create_app", "serve"]
