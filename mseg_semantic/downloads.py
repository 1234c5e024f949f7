"""Resumable HTTP downloads and file hashing: the one place in the package that fetches a URL into a file.

The model zoo (checkpoints of half a gigabyte) and ``mseg data download`` (dataset archives of up to 19 GB) both
fetch through :func:`http_download`. Large files over slow or flaky links are the normal case, so a download is
written to a ``.part`` file that the caller renames once the file is verified; a later call resumes the ``.part``
with an HTTP Range request. Servers that ignore Range (they answer 200 with the whole file) and servers that send
another range than asked make the download restart from byte 0 instead of appending a second copy. A web page
served instead of the file (a login or quota page, a dead link redirected to a home page) is recognised by its
first bytes and deleted, so it is never resumed, verified or cached as the file.

:func:`cache_dir` is the one home of the folder everything fetched or made once is kept in (zoo checkpoints,
dataset records, the runtime backends' exported files).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from mseg_semantic.errors import DownloadError

CHUNK = 1 << 20  # bytes per read: large enough for speed, small enough for a responsive progress bar
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


def cache_dir() -> Path:
    """Where downloaded and generated files live: ``$MSEG_HOME`` or ``$XDG_CACHE_HOME/mseg`` (default
    ``~/.cache/mseg``)."""
    if os.environ.get("MSEG_HOME"):
        return Path(os.environ["MSEG_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mseg"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", *, progress: bool = False) -> str:
    """Hex digest of the file at ``path`` (``algorithm``: any :mod:`hashlib` name, e.g. ``sha256``, ``md5``).

    Read in 1 MiB chunks; ``progress`` shows a byte progress bar (hashing a 19 GB archive takes minutes)."""
    path = Path(path)
    digest = hashlib.new(algorithm)
    with (
        open(path, "rb") as handle,
        tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
             desc=f"checking {path.name}", disable=not progress) as bar,
    ):  # fmt: skip
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def looks_like_html(data: bytes) -> bool:
    """True when ``data`` (the first bytes of a response) starts like an HTML page rather than a binary file."""
    head = data[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def http_download(
    url: str,
    part: str | os.PathLike,
    *,
    expected_size: int | None = None,
    progress: bool = True,
    desc: str | None = None,
    timeout: float = 30.0,
) -> Path:
    """GET ``url`` into the file ``part``, resuming from the bytes already there; returns ``part``.

    Args:
        url: ``http(s)://`` (or ``file://``) address of the file.
        part: the partial file to create or continue; the caller verifies it and renames it into place.
        expected_size: size of the complete file when known. A ``part`` of exactly that size is taken as complete
            without a request; a server announcing another size is refused before anything is written.
        progress: show a tqdm byte progress bar (labelled ``desc``, default the file name).
        timeout: seconds to wait for the server to connect or send data.

    Raises:
        DownloadError: HTTP error, unreachable server, an HTML page instead of the file (deleted), a different
            size than ``expected_size``, or a connection that closed early (the part is kept: run again to resume).
    """
    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if expected_size is not None and have >= expected_size:
        if have == expected_size:
            return part
        part.unlink()  # longer than the real file: it cannot be a prefix of it
        have = 0
    try:
        _fetch(url, part, have, expected_size, progress, desc or part.name.removesuffix(".part"), timeout)
    except _Restart:
        part.unlink(missing_ok=True)
        _fetch(url, part, 0, expected_size, progress, desc or part.name.removesuffix(".part"), timeout)
    return part


class _Restart(Exception):
    """The server cannot continue the partial file: download again from byte 0."""


def _fetch(url: str, part: Path, have: int, expected_size: int | None, progress: bool, desc: str,
           timeout: float) -> None:  # fmt: skip
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # asked to start at or past the end
            total = _content_range(exc.headers.get("Content-Range"))[1]
            if total == have and expected_size in (None, have):
                return  # the part already holds the whole file
            raise _Restart from None
        raise DownloadError(f"{url}: the server answered HTTP {exc.code} ({exc.reason})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"cannot download {url}: {reason}") from None
    with response:
        resumed = False
        if have and response.status == 206:
            start, _ = _content_range(response.headers.get("Content-Range"))
            if start != have:
                raise _Restart
            resumed = True
        # Otherwise (200) the server ignored the Range header and sends the whole file: start the part again.
        offset = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(
                f"{url} serves {total:,} bytes but the expected file has {expected_size:,}: wrong URL or mirror, "
                "or the file changed upstream; nothing was downloaded"
            )
        try:
            first = response.read(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"downloading {url} failed before any data arrived ({exc}); run again") from None
        if not resumed and looks_like_html(first):
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{url} returned an HTML page instead of the file (a login, quota or error page); nothing was kept"
            )
        with (
            open(part, "ab" if resumed else "wb") as handle,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                 disable=not progress) as bar,
        ):  # fmt: skip
            chunk = first
            try:
                while chunk:
                    handle.write(chunk)
                    bar.update(len(chunk))
                    chunk = response.read(CHUNK)
            except (OSError, http.client.HTTPException):
                pass  # a broken connection: the size check below reports it and the part is kept for resuming
    size = part.stat().st_size
    if total is not None and size < total:
        raise DownloadError(f"connection closed after {size:,} of {total:,} bytes of {url}; run again to resume")


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range`` header such as ``bytes 100-199/1000`` or ``bytes */1000``."""
    match = _CONTENT_RANGE.match(header or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total.isdigit() else None)
