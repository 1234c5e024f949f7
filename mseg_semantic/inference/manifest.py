"""``OUT/manifest.jsonl``: one JSON line per input of ``mseg demo``, what a pipeline downstream reads and what a
resumed run trusts.

Every process appends its lines itself, each line with a single ``write`` on a file opened with ``O_APPEND``, so the
lines of several processes on one machine never interleave and a killed process leaves no half line (a line that
does not parse, e.g. from a full disk, is ignored). A line says ``"status": "done"`` once all of its input's outputs
are written (atomically), or ``"failed"`` with the ``error``. The last line of an input wins; at the end of a run
the file is rewritten with one line per input when an input has several (a failure retried, ``--overwrite``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mseg_semantic.errors import InputError
from mseg_semantic.fileio import write_bytes_atomic

MANIFEST_NAME = "manifest.jsonl"


class Manifest:
    """The manifest of the output folder ``out``; records are dicts keyed by their ``name`` (output stem)."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.path = self.out / MANIFEST_NAME

    def _lines(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read the manifest ({exc.strerror or exc})") from None
        records = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("name"), str):
                records.append(record)
        return records

    def read(self) -> dict[str, dict[str, Any]]:
        """The last record of each name."""
        return {record["name"]: record for record in self._lines()}

    def is_done(self, record: dict[str, Any] | None, outputs: list[Path]) -> bool:
        """Whether ``record`` says done with every one of ``outputs`` (paths below ``out``), and they all exist."""
        if not record or record.get("status") != "done":
            return False
        listed = set(record.get("outputs") or ())
        return all(self.relative(p) in listed and p.exists() for p in outputs)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()

    def append(self, record: dict[str, Any]) -> None:
        """Add one line with one ``write`` call (``O_APPEND``: lines of concurrent processes do not interleave)."""
        data = (json.dumps(record, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            written = os.write(fd, data)
            while written < len(data):  # only on unusual file systems (a regular local file takes it at once)
                written += os.write(fd, data[written:])
        finally:
            os.close(fd)

    def compact(self) -> bool:
        """Rewrite the file with the last line of each name, in the order names first appeared, when some name has
        several lines or a line did not parse; atomically. Only while no process appends. Returns whether it did."""
        try:
            raw = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return False
        records = self._lines()
        latest = {record["name"]: record for record in records}
        if len(latest) == len(records) == len(raw):
            return False
        lines = [json.dumps(latest[name], ensure_ascii=False, separators=(", ", ": ")) for name in latest]
        write_bytes_atomic(self.path, "".join(line + "\n" for line in lines).encode("utf-8"))
        return True
