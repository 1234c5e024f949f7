"""The local HTTP file server on 127.0.0.1 that the download tests use as a mirror (``serve`` and its handler)."""

from __future__ import annotations

import contextlib
import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves the files under ``root`` (404 for anything else) and records every GET as (path, Range header or None).

    ``Range: bytes=N-`` is answered with 206 from byte N, or 416 when N is at or past the end, unless ``ignore_range``
    (then 200 and the whole file). ``cut_next_at``: the next response stops after that many body bytes although its
    Content-Length promises all of them, as a broken link does. Settings and records live on the class: ``serve``
    makes a fresh subclass per server, and tests change them there while it runs.
    """

    root: ClassVar[Path]
    url: ClassVar[str] = ""
    ignore_range: ClassVar[bool] = False
    cut_next_at: ClassVar[int | None] = None
    requests: ClassVar[list[tuple[str, str | None]]] = []
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def ranges(cls) -> list[str]:
        """The Range headers of the recorded requests that had one, in order."""
        return [value for _, value in cls.requests if value is not None]

    def do_GET(self) -> None:
        cls = type(self)
        asked = self.headers.get("Range")
        with cls._lock:
            cls.requests.append((self.path, asked))
        relative = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        path = cls.root / relative
        if ".." in Path(relative).parts or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if asked is not None and not cls.ignore_range:
            start = int(asked.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        with cls._lock:
            if cls.cut_next_at is not None:
                body, cls.cut_next_at = body[: cls.cut_next_at], None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@contextlib.contextmanager
def serve(root: Path) -> Iterator[type[MirrorHandler]]:
    """Serve the folder ``root`` (made if missing) on a free port of 127.0.0.1 in a daemon thread until the block ends.

    Yields the server's own ``MirrorHandler`` subclass: ``.root``, ``.url`` (no trailing slash), the recorded
    ``.requests`` and the settings ``.ignore_range`` and ``.cut_next_at``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    handler = type("Mirror", (MirrorHandler,), {"root": root, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
