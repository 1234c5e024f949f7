"""``OUT/manifest.jsonl``: one JSON line per input of ``mseg demo``, what a pipeline downstream reads and what a
resumed run trusts.

A one-process run appends to ``manifest.jsonl`` itself. In a run of several processes each process appends to a
part of its own, ``manifest.rankN.jsonl``, and rank 0 merges the parts into ``manifest.jsonl`` at the end: appends
of several machines to one file on a network file system (NFS) can overwrite each other, appends to files of one
writer each cannot. A run that was killed leaves its parts; the next run reads them (so it resumes) and merges
them. Each line is written with a single ``write`` on a file opened with ``O_APPEND``, so a killed process (or a
full disk) leaves at most a partial last line. Such a line is ignored and reported (``Manifest.torn``), as is any
line that does not parse, and the next line appended starts on a line of its own, so no input's line is lost.

A line says ``"status": "done"`` once all of its input's outputs are written (atomically), or ``"failed"`` with the
``error``; ``finished`` is the UTC time it was written. The latest line of an input wins; the merged file has one
line per input, in the order they finished.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mseg_semantic.errors import InputError
from mseg_semantic.fileio import write_bytes_atomic

MANIFEST_NAME = "manifest.jsonl"
_PART = re.compile(r"manifest\.rank(\d+)\.jsonl")


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": "))


class Manifest:
    """The manifest of the output folder ``out``; records are dicts keyed by their ``name`` (output stem).

    ``part``: the rank whose part this process appends to, or None to append to ``manifest.jsonl`` itself.
    """

    def __init__(self, out: str | os.PathLike, part: int | None = None) -> None:
        self.out = Path(out)
        self.path = self.out / MANIFEST_NAME
        self.writes_to = self.path if part is None else self.out / f"manifest.rank{part}.jsonl"
        self.torn: list[str] = []  # "file:line" of each line the last read could not parse

    def parts(self) -> list[Path]:
        """The part files present (of this run, or left by a killed one), by rank."""
        try:
            found = [(int(m.group(1)), p) for p in self.out.iterdir() if (m := _PART.fullmatch(p.name))]
        except FileNotFoundError:
            return []
        return [p for _, p in sorted(found)]

    def _records(self, parts: list[Path]) -> tuple[list[dict[str, Any]], int]:
        """Every record of the manifest and its ``parts``, oldest first, and the number of lines read."""
        records, lines = [], 0
        self.torn = []
        for path in [self.path, *parts]:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise InputError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
            for number, line in enumerate(text.splitlines(), start=1):
                lines += 1
                try:
                    record = json.loads(line)
                except ValueError:
                    self.torn.append(f"{path}:{number}")
                    continue
                if isinstance(record, dict) and isinstance(record.get("name"), str):
                    records.append(record)
        # The merged file first, then the parts; within that order, by the time each line was written.
        records.sort(key=lambda r: str(r.get("finished", "")))
        return records, lines

    def read(self) -> dict[str, dict[str, Any]]:
        """The latest record of each name."""
        return {record["name"]: record for record in self._records(self.parts())[0]}

    def is_done(self, record: dict[str, Any] | None, outputs: list[Path]) -> bool:
        """Whether ``record`` says done with every one of ``outputs`` (paths below ``out``), and they all exist."""
        if not record or record.get("status") != "done":
            return False
        listed = set(record.get("outputs") or ())
        return all(self.relative(p) in listed and p.exists() for p in outputs)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()

    def append(self, record: dict[str, Any]) -> None:
        """Add one line, stamped ``finished``, with one ``write`` call on an ``O_APPEND`` file."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        data = (_dump({**record, "finished": stamp}) + "\n").encode("utf-8")
        fd = os.open(self.writes_to, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a torn last line (a killed run, a full disk): this record gets a line of its own
            written = os.write(fd, data)
            while written < len(data):  # only on unusual file systems (a regular local file takes it at once)
                written += os.write(fd, data[written:])
        finally:
            os.close(fd)

    def merge(self) -> bool:
        """Rewrite ``manifest.jsonl`` atomically with the latest line of each name (the parts included), then remove
        the parts; only when there are parts, or a name has several lines, or a line did not parse. Only while no
        process appends. Returns whether it rewrote the file."""
        parts = self.parts()
        records, lines = self._records(parts)
        latest = {record["name"]: record for record in records}
        if not parts and len(latest) == len(records) == lines:
            return False
        ordered = sorted(latest.values(), key=lambda r: str(r.get("finished", "")))
        write_bytes_atomic(self.path, "".join(_dump(r) + "\n" for r in ordered).encode("utf-8"))
        for part in parts:
            part.unlink(missing_ok=True)
        return True
