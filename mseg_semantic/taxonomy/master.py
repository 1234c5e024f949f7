"""A universal taxonomy of the user's own: a master table in the format of MSeg's ``MSeg_master.tsv``.

MSeg defines its 194 universal classes in one spreadsheet: a row per universal class (column ``universal``), a
column per training dataset naming the dataset classes that become that class (``{a, b}`` for several), and a column
per test taxonomy naming the test class the row's probability is summed into. Users of the original edit that file
to add, merge, split or remove classes. Here it is data: rows are the classes of the model's head, dataset columns
the label maps, test columns the zero-shot linear maps. The dataset classes in the row named ``unlabeled`` become
255 (ignored in training); other columns (``Parent Category``, WordNet notes, legacy datasets) are ignored.

Reading collects every problem with its line (:func:`check_master`), because the original met most of them with an
assert or not at all: a dataset class in two rows, a name that is not one of the dataset's classes, a test cell
that names no test class. Dataset classes in no row become unlabeled; they, and test classes that no row feeds any
more, are notes rather than errors. The result is a :class:`~.tables.Taxonomy` of kind ``universal`` whose ``maps``
the :class:`~.converter.TaxonomyConverter` reads, and whose ``table`` (the file's text) checkpoints record.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mseg_semantic.errors import TaxonomyError
from mseg_semantic.taxonomy.files import MAX_CLASSES, closest, meta_line, name_problem, read_text_file
from mseg_semantic.taxonomy.tables import UNIVERSAL, UNLABELED, Taxonomy, get_taxonomy, taxonomy_names

ROW_COLUMN = UNIVERSAL
"""The column holding each row's class name."""


@dataclass
class MasterReport:
    """What reading a master table found: the taxonomy (None when there are errors), errors and notes."""

    taxonomy: Taxonomy | None
    errors: list[str]
    notes: list[str]


@dataclass
class _Column:
    index: int
    name: str
    classes: tuple[str, ...]
    test: bool
    owners: dict[str, tuple[str, int]] = field(default_factory=dict)  # dataset class -> (its row, line)
    fed: dict[str, list[str]] = field(default_factory=dict)  # test class -> the rows summed into it


@dataclass
class _Parser:
    origin: str
    datasets: Mapping[str, Sequence[str]]
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    header_line: int = 0
    width: int = 0
    row_index: int = -1
    columns: list[_Column] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # row name -> line
    name: tuple[int, str] | None = None

    def error(self, line: int, message: str) -> None:
        self.errors.append(f"{self.origin}:{line}: {message}")

    def parse(self, text: str) -> None:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if line.startswith("#"):
                meta = meta_line(line)
                if meta and meta[0] == "name":
                    self.name = (number, meta[1])
            elif not self.header_line:
                self.header_line = number
                if not self._header(number, line):
                    return
            else:
                self._row(number, line.split("\t"))
        if not self.header_line:
            self.error(1, f"no header line naming the columns ({ROW_COLUMN!r}, then one per dataset)")

    def _header(self, number: int, line: str) -> bool:
        names = [cell.strip() for cell in line.split("\t")]
        self.width = len(names)
        if ROW_COLUMN not in names:
            self.error(number, f"no {ROW_COLUMN!r} column in the header (it names each row's class); found {names[:6]}")
            return False
        self.row_index = names.index(ROW_COLUMN)
        ignored = []
        for i, name in enumerate(names):
            if name in names[:i]:
                self.error(number, f"column {name!r} appears twice")
            elif i != self.row_index and not self._add_column(i, name):
                ignored.append(name or f"#{i + 1}")
        if ignored:
            listed = ", ".join(ignored)
            self.notes.append(f"{self.origin}:{number}: columns ignored (no dataset of that name): {listed}")
        return True

    def _add_column(self, index: int, name: str) -> bool:
        if name in self.datasets:
            self.columns.append(_Column(index, name, tuple(self.datasets[name]), test=False))
            return True
        if name not in taxonomy_names():
            return False
        taxonomy = get_taxonomy(name)
        if taxonomy.kind not in ("train", "test"):
            return False
        self.columns.append(_Column(index, name, taxonomy.classes, test=taxonomy.kind == "test"))
        return True

    def _row(self, number: int, cells: list[str]) -> None:
        if len(cells) != self.width:
            self.error(number, f"expected {self.width} tab-separated columns like the header, found {len(cells)}")
            return
        row = cells[self.row_index].strip()
        if not row:
            self.error(number, f"empty {ROW_COLUMN!r} cell (each row names its class)")
            return
        if row in self.rows:
            self.error(number, f"row {row!r} appears twice (also on line {self.rows[row]})")
            return
        self.rows[row] = number
        for column in self.columns:
            self._cell(number, row, column, cells[column.index].strip())

    def _cell(self, number: int, row: str, column: _Column, cell: str) -> None:
        if column.test and row == UNLABELED and cell:
            self.error(number, f"the {UNLABELED!r} row feeds no test class; empty its {column.name} cell")
            return
        for name in split_cell(cell, column.test):
            if name not in column.classes:
                kind = "test class" if column.test else "class"
                self.error(number, f"{name!r} is not a {column.name} {kind}{closest(name, column.classes)}")
            elif not column.test and name in column.owners:
                first, line = column.owners[name]
                self.error(
                    number,
                    f"{column.name} class {name!r} is in two rows: {first!r} (line {line}) and {row!r}; a dataset "
                    "class becomes one row only",
                )
            elif column.test:
                column.fed.setdefault(name, []).append(row)
            else:
                column.owners[name] = (row, number)

    def taxonomy(self, text: str) -> Taxonomy | None:
        classes = tuple(row for row in self.rows if row != UNLABELED)
        if self.header_line and not classes and not self.errors:
            self.error(self.header_line, "no rows below the header")
        if len(classes) > MAX_CLASSES:
            self.error(self.header_line, f"{len(classes)} rows; a model has at most {MAX_CLASSES} classes here")
        line, name = self.name or (1, Path(self.origin).stem)
        problem = name_problem(name)
        if problem:
            self.error(line, problem)
        maps = {column.name: self._map(column) for column in self.columns}
        self._notes()
        if self.errors:
            return None
        return Taxonomy(
            name=name,
            kind=UNIVERSAL,
            description=f"{len(classes)} universal classes from the master table {self.origin}",
            classes=classes,
            universal=tuple((c,) for c in classes),
            origin=self.origin,
            origin_line=self.header_line,
            maps=maps,
            table=text,
        )

    def _map(self, column: _Column) -> tuple[tuple[str, ...], ...]:
        if column.test:
            return tuple(tuple(column.fed.get(c, ())) for c in column.classes)
        return tuple((column.owners.get(c, (UNLABELED, 0))[0],) for c in column.classes)

    def _notes(self) -> None:
        for column in self.columns:
            if column.test:
                self._test_notes(column)
                continue
            missing = [c for c in column.classes if c not in column.owners]
            if missing:
                self.notes.append(
                    f"{self.origin}:{self.header_line}: {column.name}: {len(missing)} class(es) in no row become "
                    f"unlabeled: {', '.join(missing)}"
                )

    def _test_notes(self, column: _Column) -> None:
        """Test classes that no row feeds although the built-in table feeds them: rows renamed or removed."""
        builtin = get_taxonomy(column.name)
        for cls, sources in zip(builtin.classes, builtin.universal, strict=True):
            if sources and cls not in column.fed:
                gone = [s for s in sources if s not in self.rows]
                hint = f" (its universal classes {', '.join(gone)} are not rows)" if gone else ""
                self.notes.append(
                    f"{self.origin}:{self.header_line}: {column.name}: test class {cls!r} is fed by no row{hint}; "
                    "it will always have probability 0"
                )


def builtin_master() -> str:
    """The package's universal taxonomy written as a master table: the starting point for one of the user's own.

    A row per universal class and a last ``unlabeled`` row; a column per training taxonomy (the classes that become
    each row, ``{a, b}`` for several) and per test taxonomy (the class each row is summed into). Read back, it gives
    the built-in maps exactly; the original's documentation columns are left out."""
    universal = get_taxonomy(UNIVERSAL).classes
    datasets, tests = taxonomy_names("train"), taxonomy_names("test")
    rows = {name: [name] for name in (*universal, UNLABELED)}
    for dataset in datasets:
        members: dict[str, list[str]] = {name: [] for name in rows}
        taxonomy = get_taxonomy(dataset)
        for cls, (target,) in zip(taxonomy.classes, taxonomy.universal, strict=True):
            members[target].append(cls)
        for name, found in members.items():
            rows[name].append(found[0] if len(found) == 1 else "{" + ", ".join(found) + "}" if found else "")
    for test in tests:
        taxonomy = get_taxonomy(test)
        fed = {u: cls for cls, sources in zip(taxonomy.classes, taxonomy.universal, strict=True) for u in sources}
        for name in rows:
            rows[name].append(fed.get(name, "") if name != UNLABELED else "")
    lines = ["\t".join([ROW_COLUMN, *datasets, *tests])] + ["\t".join(cells) for cells in rows.values()]
    return "\n".join(lines) + "\n"


def read_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """A dataset's names list: line ``i`` names the class of label ``i`` (MSeg's ``<dataset>_names.txt``).

    Raises :class:`TaxonomyError` naming the file and line of an empty or repeated name, or too many classes."""
    lines = read_text_file(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            raise TaxonomyError(f"{path}:{number}: empty line; line i names the class of label i-1")
        if name in seen:
            raise TaxonomyError(f"{path}:{number}: class {name!r} is named twice (also on line {seen[name]})")
        seen[name] = number
    if not seen:
        raise TaxonomyError(f"{path}: no class names (one per line: line i names the class of label i-1)")
    if len(seen) > MAX_CLASSES:
        raise TaxonomyError(f"{path}: {len(seen)} classes; a label map holds at most {MAX_CLASSES}")
    return tuple(seen)


def split_cell(cell: str, single: bool = False) -> list[str]:
    """The class names of one cell: empty, one name, or ``{a, b, c}`` (dataset columns only)."""
    if not cell:
        return []
    if cell.startswith("{") and cell.endswith("}") and not single:
        return [name.strip() for name in cell[1:-1].split(",") if name.strip()]
    return [cell]


def master_from_text(
    text: str, origin: str = "master", datasets: Mapping[str, Sequence[str]] | None = None
) -> MasterReport:
    """Read a master table's text; ``datasets``: class names (in label order) of datasets of the user's own."""
    parser = _Parser(origin, datasets or {})
    parser.parse(text)
    taxonomy = parser.taxonomy(text) if parser.header_line and parser.row_index >= 0 else None
    return MasterReport(taxonomy, parser.errors, parser.notes)


def check_master(
    path: str | os.PathLike[str], datasets: Mapping[str, Sequence[str]] | None = None
) -> MasterReport:
    """Every error and note of a master table file, each ``FILE:LINE: message``."""
    return master_from_text(read_text_file(path), str(path), datasets)


def load_master(path: str | os.PathLike[str], datasets: Mapping[str, Sequence[str]] | None = None) -> Taxonomy:
    """The universal :class:`Taxonomy` a master table file defines; :class:`TaxonomyError` naming the file and line
    of its first error (and how many more there are)."""
    return _taxonomy_or_error(check_master(path, datasets), path)


def _taxonomy_or_error(report: MasterReport, path: str | os.PathLike[str]) -> Taxonomy:
    if report.taxonomy is None:
        more = len(report.errors) - 1
        rest = f" (and {more} more: mseg taxonomy check --master {path})" if more else ""
        raise TaxonomyError(report.errors[0] + rest)
    return report.taxonomy


def names_taxonomy(name: str, classes: Sequence[str], origin: str) -> Taxonomy:
    """The label taxonomy of a dataset of the user's own (from its names list); what its classes become in a
    universal taxonomy is the master table's column, not part of it."""
    return Taxonomy(
        name=name,
        kind="train",
        description=f"a dataset of your own, {len(classes)} classes from {origin}",
        classes=tuple(classes),
        universal=((UNLABELED,),) * len(classes),
        origin=origin,
        table="\n".join(classes),
    )


#: Checkpoint metadata keys that carry a taxonomy of the user's own: its file's text and which kind of file it is.
RECORD_KEYS = ("taxonomy_table", "taxonomy_format")


def checkpoint_record(taxonomy: Taxonomy) -> dict[str, str]:
    """What a checkpoint records of a model's taxonomy besides its name, so that loading it needs no file: the text of
    a master table or names list; nothing for a built-in taxonomy."""
    if taxonomy.table is None:
        return {}
    return {"taxonomy_table": taxonomy.table, "taxonomy_format": "master" if taxonomy.kind == UNIVERSAL else "names"}


def recorded_taxonomy(name: str, metadata: Mapping[str, str], origin: str) -> Taxonomy:
    """The taxonomy ``name`` a checkpoint's ``metadata`` records (:func:`checkpoint_record`), made known by name in this
    process; a built-in name needs no record."""
    from mseg_semantic.taxonomy.tables import register_taxonomy

    text, kind = metadata.get("taxonomy_table"), metadata.get("taxonomy_format")
    if text is None:
        return get_taxonomy(name)
    if kind == "names":
        return register_taxonomy(names_taxonomy(name, text.split("\n"), origin))
    taxonomy = _taxonomy_or_error(master_from_text(text, origin), origin)
    if taxonomy.name != name:  # a master table named by its file: the record keeps the name it was trained under
        taxonomy = dataclasses.replace(taxonomy, name=name)
    return register_taxonomy(taxonomy)
