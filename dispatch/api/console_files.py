"""The officer console's files: plain HTML, CSS and JavaScript shipped in the package, served at `/console/`
(`/` redirects there).

Invariants:
- only the files present in `dispatch/api/console/` when the process starts are served, by exact
  name: no path from a request ever reaches the file system;
- the page needs nothing from outside this service (no CDN, no fonts, no build step) and the
  browser is told so: a Content-Security-Policy allows scripts, styles and connections from this
  origin only;
- the files need no token (they hold no data); every request the page makes for data carries one.
"""

from __future__ import annotations

from importlib import resources
from pathlib import PurePosixPath
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath
from litestar.response import Redirect

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; media-src 'self' data:; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def load_files() -> dict[str, tuple[bytes, str]]:
    """Every console file by name, with its media type."""
    folder = resources.files("dispatch.api").joinpath("console")
    files: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = PurePosixPath(entry.name).suffix
        if entry.is_file() and suffix in MEDIA_TYPES:
            files[entry.name] = (entry.read_bytes(), MEDIA_TYPES[suffix])
    return files


def console_routes() -> list[HTTPRouteHandler]:
    files = load_files()

    def serve(name: str) -> Response[bytes]:
        found = files.get(name)
        if found is None:
            raise NotFoundException(f"no console file {name}")
        body, media_type = found
        return Response(body, media_type=media_type, headers=HEADERS)

    @get(["/console", "/console/"], include_in_schema=False, opt={"public": True})
    async def console_index(request: Request[Any, Any, Any]) -> Response[Any]:
        raw = request.scope.get("raw_path") or request.url.path.encode()
        if not raw.split(b"?")[0].endswith(b"/"):
            return Redirect(f"{request.url.path.rstrip('/')}/", status_code=308)
        return serve("index.html")

    @get("/console/{name:str}", include_in_schema=False, opt={"public": True})
    async def console_file(name: FromPath[str]) -> Response[bytes]:
        return serve(name)

    @get("/", include_in_schema=False, opt={"public": True})
    async def root() -> Redirect:
        """A browser pointed at the service lands on the console (302, no token needed)."""
        return Redirect("/console/", status_code=302)

    return [console_index, console_file, root]
