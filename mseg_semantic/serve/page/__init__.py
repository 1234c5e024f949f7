"""The page ``mseg serve`` shows at ``/``: plain HTML, CSS and JavaScript that ship with the package.

No build step and nothing fetched from elsewhere (no CDN, no web fonts), so the page works on a machine without
internet access; it talks to the service's own API only. The files are looked up by name in :data:`PAGE_FILES`,
never by a path taken from a request.
"""

from __future__ import annotations

import functools
from importlib import resources

#: The page's files and their media types.
PAGE_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
}


@functools.cache
def page_file(name: str) -> tuple[bytes, str]:
    """The bytes of one of :data:`PAGE_FILES` and its media type."""
    media_type = PAGE_FILES[name]
    return resources.files(__name__).joinpath(name).read_bytes(), media_type
