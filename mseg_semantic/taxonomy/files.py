"""A taxonomy of the user's own, read from a file in the format of the package's test-taxonomy tables.

MSeg reaches its zero-shot test taxonomies with a fixed linear map: each test class sums the probabilities of some
universal classes. Nothing in that needs retraining, so a user can define an output taxonomy the same way, over the
classes of any taxonomy a model predicts (``universal``, or ``camvid-11`` for the bundled model)::

    # name: drive
    # palette: 128,64,128; 220,20,60; 70,130,180; 90,90,90
    id	name	camvid-11
    0	drivable	Road
    1	obstacle	Car; Pedestrian; Bicyclist; Fence; SignSymbol; Column_Pole
    2	sky	Sky
    3	other	Building; Tree; Sidewalk

A source class in no row contributes to none. Reading gives a :class:`~.tables.Taxonomy` of kind ``"file"``; the
matrix comes from :class:`~.converter.TaxonomyConverter`, the single owner of linear maps. Every problem is reported
as ``FILE:LINE: message`` (:func:`check_taxonomy_file` lists them all, :func:`load_taxonomy_file` raises the first),
because a user edits the file by line.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mseg_semantic.errors import InputError, TaxonomyError
from mseg_semantic.taxonomy.tables import IGNORE_LABEL, Taxonomy, get_taxonomy, split_sources, taxonomy_names

FILE_KIND = "file"
MAX_CLASSES = IGNORE_LABEL - 1
"""At most 254 classes: ids 0..253 fit a uint8 label map with 255 (unlabeled) to spare."""

_META = re.compile(r"^#\s*(name|palette)\s*:\s*(.*?)\s*$")


@dataclass
class _Row:
    line: int
    id: int | None
    name: str
    sources: tuple[str, ...]


@dataclass
class _Parser:
    """One pass over a taxonomy file, collecting every problem with its line."""

    path: str
    problems: list[str] = field(default_factory=list)
    meta: dict[str, tuple[int, str]] = field(default_factory=dict)
    header_line: int = 0
    source: Taxonomy | None = None
    rows: list[_Row] = field(default_factory=list)
    row_lines: int = 0  # lines below the header, well-formed or not
    ids: dict[int, int] = field(default_factory=dict)  # id -> its first line
    names: dict[str, int] = field(default_factory=dict)  # name -> its first line
    owners: dict[str, _Row] = field(default_factory=dict)  # source class -> the row that sums it

    def problem(self, line: int, message: str) -> None:
        self.problems.append(f"{self.path}:{line}: {message}")

    def parse(self, text: str) -> Taxonomy | None:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if line.startswith("#"):
                meta = meta_line(line)
                if meta:
                    self.meta[meta[0]] = (number, meta[1])
            elif not self.header_line:
                self.header_line = number
                self._header(number, line)
                if self.source is None:
                    return None
            else:
                self._row(number, line)
        if not self.header_line:
            self.problem(
                1, "no header line 'id<TAB>name<TAB>SOURCE' (SOURCE: universal or a taxonomy a model predicts)"
            )
            return None
        return self._taxonomy()

    def _header(self, number: int, line: str) -> None:
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) != 3 or fields[:2] != ["id", "name"]:
            tabs = "" if "\t" in line else "; the columns must be separated by tabs"
            self.problem(
                number,
                f"expected the header 'id<TAB>name<TAB>SOURCE' (SOURCE: universal or a taxonomy a model "
                f"predicts), found {line!r}{tabs}",
            )
            return
        known = taxonomy_names()
        try:
            self.source = get_taxonomy(fields[2])  # built in, or the universal taxonomy of a loaded model's table
        except TaxonomyError:
            self.problem(number, f"unknown SOURCE taxonomy {fields[2]!r}{closest(fields[2], known)}")

    def _row(self, number: int, line: str) -> None:
        self.row_lines += 1
        fields = line.split("\t")
        if len(fields) != 3:
            self.problem(
                number, f"expected 3 tab-separated columns (id, name, {self._source_name} classes), found {len(fields)}"
            )
            return
        text_id, name, cell = (f.strip() for f in fields)
        class_id = int(text_id) if re.fullmatch(r"-?\d+", text_id) else None
        if class_id is None:
            self.problem(number, f"id {text_id!r} is not an integer")
        if class_id is not None and class_id in self.ids:
            self.problem(number, f"duplicate id {class_id} (also on line {self.ids[class_id]})")
        if name in self.names:
            self.problem(number, f"duplicate name {name!r} (also on line {self.names[name]})")
        if not name:
            self.problem(number, "empty class name")
        row = _Row(number, class_id, name, split_sources(cell))
        self._sources(row)
        self.rows.append(row)
        if class_id is not None:
            self.ids.setdefault(class_id, number)
        self.names.setdefault(name, number)

    def _sources(self, row: _Row) -> None:
        assert self.source is not None
        classes, source = set(self.source.classes), self._source_name
        for i, cls in enumerate(row.sources):
            if cls not in classes:
                self.problem(row.line, f"unknown {source} class {cls!r}{closest(cls, self.source.classes)}")
            elif cls in row.sources[:i]:
                self.problem(row.line, f"{source} class {cls!r} is listed twice in {row.name!r}")
            elif cls in self.owners:
                owner = self.owners[cls]
                self.problem(
                    row.line,
                    f"{source} class {cls!r} is in two rows: {row.name!r} and {owner.name!r} (line {owner.line}); "
                    "a class can be summed into one row only",
                )
            else:
                self.owners[cls] = row

    @property
    def _source_name(self) -> str:
        return self.source.name if self.source is not None else "SOURCE"

    def _taxonomy(self) -> Taxonomy | None:
        n = len(self.rows)
        if self.row_lines == 0:
            self.problem(self.header_line, "no classes below the header")
        if n > MAX_CLASSES:
            self.problem(
                self.rows[MAX_CLASSES].line,
                f"{n} classes; a taxonomy file has at most {MAX_CLASSES} (label {IGNORE_LABEL} means unlabeled)",
            )
        for row in self.rows:
            if row.id is not None and not 0 <= row.id < n:
                self.problem(row.line, f"id {row.id} is not in 0..{n - 1} (ids are 0..N-1 for the N = {n} rows)")
        name = self._name()
        colors = self._palette(n)
        if self.problems or self.source is None:
            return None
        rows = sorted(self.rows, key=lambda row: row.id or 0)
        return Taxonomy(
            name=name,
            kind=FILE_KIND,
            description=f"{n} classes over {self.source.name}, from {self.path}",
            classes=tuple(row.name for row in rows),
            universal=tuple(row.sources for row in rows),
            colors=colors,
            source=self.source.name,
            origin=self.path,
            origin_line=self.header_line,
        )

    def _name(self) -> str:
        line, name = self.meta.get("name", (1, Path(self.path).stem))
        problem = name_problem(name)
        if problem:
            self.problem(line, problem)
        return name

    def _palette(self, n: int) -> tuple[tuple[int, int, int], ...] | None:
        if "palette" not in self.meta:
            return None
        line, text = self.meta["palette"]
        colors = []
        for item in text.split(";"):
            values = item.strip().split(",")
            if len(values) != 3 or not all(re.fullmatch(r"\d{1,3}", v.strip()) and int(v) <= 255 for v in values):
                self.problem(line, f"palette colour {item.strip()!r} is not R,G,B with values 0..255")
                return None
            colors.append((int(values[0]), int(values[1]), int(values[2])))
        if len(colors) != n:
            self.problem(line, f"the palette has {len(colors)} colours for {n} classes ('R,G,B; R,G,B; ...' by id)")
            return None
        return tuple(colors)


def name_problem(name: str) -> str | None:
    """What is wrong with the name a taxonomy file gives its taxonomy (``# name:`` or the file's stem), or None."""
    if not name:
        return "empty '# name:'"
    if name in taxonomy_names():
        return f"name {name!r} is a built-in taxonomy's; give the file another ('# name: ...')"
    if not re.fullmatch(r"[\w.+-]+", name):
        return f"name {name!r} may hold only letters, digits and . _ + - (it names output folders)"
    return None


def meta_line(line: str) -> tuple[str, str] | None:
    """``(key, value)`` of a ``# name: ...`` or ``# palette: ...`` comment line, else None."""
    match = _META.match(line)
    return (match[1], match[2]) if match else None


def closest(name: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    close += [c for c in choices if c.lower() == name.lower() and c not in close]
    return f" (closest: {', '.join(repr(c) for c in close)})" if close else ""


def read_text_file(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark (spreadsheet exports) is dropped
    except FileNotFoundError:
        raise InputError(f"{path}: no such taxonomy file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a taxonomy file") from None
    except UnicodeDecodeError as exc:
        raise TaxonomyError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None


def check_taxonomy_file(path: str | os.PathLike) -> list[str]:
    """Every problem of a taxonomy file, each ``FILE:LINE: message``; empty when the file is good."""
    parser = _Parser(str(path))
    parser.parse(read_text_file(path))
    return parser.problems


def load_taxonomy_file(path: str | os.PathLike) -> Taxonomy:
    """The :class:`Taxonomy` (kind ``"file"``) a taxonomy file defines; :class:`TaxonomyError` naming the file and
    line of its first problem (and how many more there are)."""
    parser = _Parser(str(path))
    taxonomy = parser.parse(read_text_file(path))
    if taxonomy is None:
        more = len(parser.problems) - 1
        rest = f" (and {more} more: mseg taxonomy check {path})" if more else ""
        raise TaxonomyError(parser.problems[0] + rest)
    return taxonomy


def is_taxonomy_file(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a file rather than a built-in taxonomy: a path, or a name ending in ``.tsv``."""
    text = os.fspath(spec)
    return isinstance(spec, os.PathLike) or text.endswith(".tsv") or os.sep in text or os.path.isfile(text)


def resolve_taxonomy(spec: str | os.PathLike | Taxonomy) -> Taxonomy:
    """A :class:`Taxonomy` from a built-in name (``camvid-11``), a taxonomy file's path, or a Taxonomy itself."""
    if isinstance(spec, Taxonomy):
        return spec
    if isinstance(spec, str) and spec in taxonomy_names():
        return get_taxonomy(spec)
    if is_taxonomy_file(spec):
        return load_taxonomy_file(spec)
    try:
        return get_taxonomy(os.fspath(spec))
    except TaxonomyError as exc:  # an unknown name: the error lists the known ones
        raise TaxonomyError(f"{exc} (or give a taxonomy file: a path ending in .tsv)") from None


def source_mismatch(taxonomy: Taxonomy, predicted: str, by: str = "the probabilities come from") -> TaxonomyError:
    """The error for a taxonomy file whose SOURCE is not the taxonomy that is predicted (``predicted``)."""
    return TaxonomyError(
        f"{taxonomy.origin}:{taxonomy.origin_line}: SOURCE {taxonomy.source!r}, but {by} {predicted!r}: write the "
        f"file over {predicted} classes (header 'id<TAB>name<TAB>{predicted}')"
    )


def taxonomy_record(taxonomy: Taxonomy) -> dict[str, str]:
    """What a manifest records of a taxonomy file besides its name: the file and a SHA-256 of its classes, sources
    and colours (a changed file makes a resumed run redo its inputs); nothing for a built-in taxonomy."""
    if taxonomy.kind != FILE_KIND:
        return {}
    rows = zip(taxonomy.classes, taxonomy.universal, taxonomy.colors or [()] * taxonomy.num_classes, strict=True)
    text = "\n".join(f"{name}\t{'; '.join(sources)}\t{color}" for name, sources, color in rows)
    digest = hashlib.sha256(f"{taxonomy.source}\n{text}".encode()).hexdigest()
    return {"taxonomy_file": str(Path(taxonomy.origin or "").resolve()), "taxonomy_sha256": digest}
