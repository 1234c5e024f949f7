"""``mseg taxonomy list|show|map|check``: look at the taxonomies and the maps between them, and check a taxonomy file.

``show`` and ``map`` take a taxonomy file wherever they take a name (:mod:`mseg_semantic.taxonomy.files`), so a
user sees their own taxonomy the way they see a test taxonomy; ``check`` lists every problem of such a file at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mseg_semantic.cli import add_command_parser
from mseg_semantic.cli.text import format_table, print_json
from mseg_semantic.errors import InputError
from mseg_semantic.fileio import write_bytes_atomic
from mseg_semantic.taxonomy import get_taxonomy, remap_tables, taxonomy_names
from mseg_semantic.taxonomy.files import FILE_KIND, check_taxonomy_file, load_taxonomy_file, resolve_taxonomy
from mseg_semantic.taxonomy.master import builtin_master, check_master, read_names
from mseg_semantic.taxonomy.tables import IGNORE_LABEL, KINDS, NAIVE, UNIVERSAL, UNLABELED, Taxonomy


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "taxonomy",
        description="The MSeg taxonomies: the 194-class universal taxonomy, the naive merge (316 outputs), the "
        "training datasets' taxonomies (and their MSeg-relabeled versions), the zero-shot test taxonomies, and "
        "raw label sets as distributed.",
    )
    parser.set_defaults(group_parser=parser)
    sub = parser.add_subparsers(dest="taxonomy_command", metavar="SUBCOMMAND")

    p_list = sub.add_parser("list", help="every taxonomy with its kind and class count")
    p_list.add_argument("--kind", choices=KINDS, help="only taxonomies of this kind")
    p_list.add_argument("--json", action="store_true", help="machine-readable output")
    p_list.set_defaults(func=run_list)

    p_show = sub.add_parser(
        "show",
        help="the classes of one taxonomy with their universal counterpart(s)",
        description="Each class (label value, name) with its universal counterpart: for a training taxonomy the "
        "universal class its labels become (or 'unlabeled' when ignored), for a test taxonomy the universal "
        "classes whose probabilities it collects, for a raw taxonomy the class in each taxonomy a pairwise table "
        "maps it to.",
    )
    p_show.add_argument(
        "name", metavar="NAME", help="taxonomy name, e.g. camvid-11 (see 'mseg taxonomy list'), or a taxonomy file"
    )
    p_show.add_argument("--json", action="store_true", help="machine-readable output")
    p_show.set_defaults(func=run_show)

    p_map = sub.add_parser(
        "map",
        help="the map from one taxonomy to another",
        description="Label maps (a training or raw taxonomy to 'universal', to 'naive', or along a pairwise table "
        "such as cityscapes-34 -> cityscapes-19) and probability maps ('universal' or 'naive' to a test taxonomy).",
        epilog="examples:\n  mseg taxonomy map --from ade20k-150 --to universal\n"
        "  mseg taxonomy map --from universal --to camvid-11\n"
        "  mseg taxonomy map --from cityscapes-34 --to cityscapes-19",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_map.add_argument("--from", dest="source", required=True, metavar="A", help="source taxonomy")
    p_map.add_argument("--to", dest="target", required=True, metavar="B", help="target taxonomy, or a taxonomy file")
    p_map.add_argument("--json", action="store_true", help="machine-readable output")
    p_map.set_defaults(func=run_map)

    p_master = sub.add_parser(
        "master",
        help="MSeg's universal taxonomy as a master table, to edit into a universal taxonomy of your own",
        description="Writes the universal taxonomy in the format of MSeg's MSeg_master.tsv: a row per universal "
        "class (column 'universal'), a column per training dataset naming its classes that become the row ({a, b} "
        "for several) and a column per test taxonomy naming the class the row is summed into. Add, merge, split or "
        "remove rows, add a column for a dataset of your own, check it with 'mseg taxonomy check --master FILE' and "
        "train with 'mseg train CONFIG --set taxonomy.master=FILE'. See docs/taxonomies.md.",
    )
    p_master.add_argument("--out", metavar="FILE", help="write it here (default: print it)")
    p_master.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    p_master.set_defaults(func=run_master)

    p_check = sub.add_parser(
        "check",
        help="check a taxonomy file of your own: every problem, each with its line",
        description="Check a taxonomy file (header 'id<TAB>name<TAB>SOURCE', one row per class, the SOURCE classes "
        "summed into it separated by '; '; optional '# name:' and '# palette: R,G,B; ...' lines). Prints every "
        "problem as FILE:LINE: message (exit status 2), or a summary when there is none. See docs/taxonomies.md.",
    )
    p_check.add_argument("file", metavar="FILE", nargs="?", help="the taxonomy file (.tsv)")
    p_check.add_argument(
        "--master",
        metavar="FILE",
        help="check a universal taxonomy of your own instead: a master table in the format of MSeg's "
        "MSeg_master.tsv (a row per universal class, a column per dataset), as trained with --set taxonomy.master=FILE",
    )
    p_check.add_argument(
        "--names",
        metavar="DATASET=FILE",
        action="append",
        default=[],
        help="with --master: the names list of a dataset of your own whose column the table has (repeatable)",
    )
    p_check.epilog = (
        "examples:\n  mseg taxonomy check drive.tsv\n  mseg taxonomy check --master my_master.tsv\n"
        "  mseg taxonomy check --master my_master.tsv --names my-streets=my-streets_names.txt"
    )
    p_check.formatter_class = argparse.RawDescriptionHelpFormatter
    p_check.set_defaults(func=run_check)


def run_list(args: argparse.Namespace) -> int:
    rows = []
    for name in taxonomy_names(args.kind):
        tax = get_taxonomy(name)
        rows.append({"name": name, "kind": tax.kind, "num_classes": tax.num_classes, "description": tax.description})
    if args.json:
        print_json(rows)
    else:
        print(format_table(["name", "kind", "classes", "description"], [list(r.values()) for r in rows]))
    return 0


def run_check(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.master is None):
        raise InputError("give a taxonomy FILE or --master FILE (one of them)")
    if args.master is not None:
        return _check_master(args.master, args.names)
    if args.names:
        raise InputError("--names goes with --master (the names lists of datasets with a column in the table)")
    problems = check_taxonomy_file(args.file)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {args.file}", file=sys.stderr)
        return 2
    tax = load_taxonomy_file(args.file)
    used = {name for sources in tax.universal for name in sources}
    unused = [name for name in get_taxonomy(tax.source).classes if name not in used]
    print(f"{args.file}: taxonomy {tax.name!r}, {tax.num_classes} classes over {tax.source}; ", end="")
    print(f"{tax.source} classes in no row (summed into none): {', '.join(unused) if unused else 'none'}")
    return 0


def run_master(args: argparse.Namespace) -> int:
    text = builtin_master()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it")
    write_bytes_atomic(out, text.encode("utf-8"))
    print(f"wrote {out}: {text.count(chr(10)) - 1} rows (194 universal classes and 'unlabeled')")
    return 0


def _check_master(path: str, names: list[str]) -> int:
    """``mseg taxonomy check --master FILE``: its errors (exit 2) and notes, or a summary of what it defines."""
    datasets = {}
    for item in names:
        dataset, sep, file = item.partition("=")
        if not sep or not dataset or not file:
            raise InputError(f"--names expects DATASET=FILE (e.g. my-streets=names.txt), got {item!r}")
        datasets[dataset] = read_names(file)
    report = check_master(path, datasets)
    for line in [*report.errors, *(f"note: {note}" for note in report.notes)]:
        print(line, file=sys.stderr)
    if report.taxonomy is None:
        count = len(report.errors)
        print(f"{count} problem{'s' * (count > 1)} in {path}", file=sys.stderr)
        return 2
    tax = report.taxonomy
    columns = ", ".join(tax.maps) or "none"
    print(f"{path}: universal taxonomy {tax.name!r}, {tax.num_classes} classes; columns read: {columns}")
    return 0


def _show_file(tax: Taxonomy, as_json: bool) -> int:
    """``mseg taxonomy show FILE``: each class with the source classes summed into it."""
    classes = []
    for i, name in enumerate(tax.classes):
        entry: dict = {"id": i, "name": name, "source": list(tax.universal[i])}
        entry["source_ids"] = _uid_label(tax.universal[i], tax.source)
        if tax.colors is not None:
            entry["color"] = list(tax.colors[i])
        classes.append(entry)
    if as_json:
        summary = {"name": tax.name, "kind": tax.kind, "file": tax.origin, "source": tax.source}
        print_json(summary | {"num_classes": tax.num_classes, "ignore_label": IGNORE_LABEL, "classes": classes})
        return 0
    print(f"{tax.name}: {tax.description} ({tax.num_classes} classes; 255 = unlabeled)")
    headers = ["id", "name", f"{tax.source} classes summed into it"] + (["color"] if tax.colors else [])
    rows = []
    for entry in classes:
        pairs = zip(entry["source"], entry["source_ids"], strict=True)
        row = [entry["id"], entry["name"], ", ".join(f"{n} ({u})" for n, u in pairs) or "-"]
        rows.append(row + ([",".join(str(v) for v in entry["color"])] if tax.colors else []))
    print(format_table(headers, rows))
    return 0


def _uid_label(names: tuple[str, ...], source: str = UNIVERSAL) -> list[int]:
    uid = {n: i for i, n in enumerate(get_taxonomy(source).classes)}
    uid[UNLABELED] = IGNORE_LABEL
    return [uid[n] for n in names if n in uid]


def run_show(args: argparse.Namespace) -> int:
    tax = resolve_taxonomy(args.name)
    return _show_file(tax, args.json) if tax.kind == FILE_KIND else _show_builtin(tax, args.json)


def _show_builtin(tax: Taxonomy, as_json: bool) -> int:
    from mseg_semantic.taxonomy import TaxonomyConverter

    converter = TaxonomyConverter()
    outgoing = sorted(target for (source, target) in remap_tables() if source == tax.name)
    classes = []
    for i, name in enumerate(tax.classes):
        entry: dict = {"id": i, "name": name}
        if tax.kind in ("train", "test", UNIVERSAL):
            entry["universal"] = list(tax.universal[i])
            entry["universal_ids"] = _uid_label(tax.universal[i])
        if tax.kind == NAIVE:
            entry["merged_from"] = list(tax.universal[i])
        if tax.kind == UNIVERSAL:
            entry.update({key: values[i] for key, values in tax.details.items()})
        if tax.colors is not None:
            entry["color"] = list(tax.colors[i])
        for target in outgoing:
            tid = int(converter.lookup_table(tax.name, target)[i])
            entry.setdefault("remap", {})[target] = get_taxonomy(target).classes[tid] if tid != IGNORE_LABEL else None
        classes.append(entry)
    if as_json:
        print_json(
            {
                "name": tax.name,
                "kind": tax.kind,
                "description": tax.description,
                "num_classes": tax.num_classes,
                "ignore_label": IGNORE_LABEL,
                "classes": classes,
            }
        )
        return 0
    print(f"{tax.name}: {tax.description} ({tax.kind}, {tax.num_classes} classes; 255 = unlabeled)")
    headers = ["id", "name"]
    if tax.kind == "train":
        headers.append("universal")
    elif tax.kind == "test":
        headers.append("universal classes summed into it")
    elif tax.kind == NAIVE:
        headers.append("merged from")
    elif tax.kind == UNIVERSAL:
        headers += ["group", "definition"]
    headers += [f"-> {t}" for t in outgoing]
    rows = []
    for entry in classes:
        row = [entry["id"], entry["name"]]
        if tax.kind in ("train", "test"):
            pairs = zip(entry["universal"], entry["universal_ids"], strict=True)
            row.append(", ".join(f"{n} ({u})" if u != IGNORE_LABEL else "unlabeled (ignored)" for n, u in pairs) or "-")
        elif tax.kind == NAIVE:
            row.append(", ".join(entry["merged_from"]) or "(never a training label)")
        elif tax.kind == UNIVERSAL:
            row += [entry["group"], entry["definition"]]
        row += [entry["remap"][t] or "unlabeled" for t in outgoing]
        rows.append(row)
    print(format_table(headers, rows))
    return 0


def run_map(args: argparse.Namespace) -> int:
    from mseg_semantic.taxonomy import TaxonomyConverter

    source, target = get_taxonomy(args.source), resolve_taxonomy(args.target)
    converter = TaxonomyConverter()
    if (source.name in (UNIVERSAL, NAIVE) and target.kind == "test") or target.kind == FILE_KIND:
        matrix = converter.universal_to_test_matrix(target if target.kind == FILE_KIND else target.name, source.name)
        rows = []
        for u, uname in enumerate(source.classes):
            hits = matrix[:, u].nonzero()[0]
            tid = int(hits[0]) if len(hits) else None
            rows.append(
                {
                    "source_id": u,
                    "source": uname,
                    "target_id": tid,
                    "target": target.classes[tid] if tid is not None else None,
                }
            )
        kind = "probability"
    else:
        table = converter.lookup_table(source.name, target.name)
        rows = []
        ids = [*range(source.num_classes), *([IGNORE_LABEL] if source.num_classes <= IGNORE_LABEL else [])]
        for sid in ids:
            tid = int(table[sid])
            sname = source.classes[sid] if sid < source.num_classes else UNLABELED
            tname = target.classes[tid] if 0 <= tid < target.num_classes and tid != IGNORE_LABEL else UNLABELED
            rows.append({"source_id": sid, "source": sname, "target_id": tid, "target": tname})
        kind = "label"
    if args.json:
        print_json({"source": source.name, "target": target.name, "kind": kind, "map": rows})
        return 0
    if kind == "probability":
        print(
            f"{source.name} -> {target.name}: the probability of each {target.name} class is the sum over the "
            f"{source.name} classes mapped to it ('-' = dropped)"
        )
    else:
        print(f"{source.name} -> {target.name}: label value map (255 = unlabeled / ignored)")
    print(
        format_table(
            [f"{source.name} id", "class", f"{target.name} id", "class"],
            [
                [r["source_id"], r["source"], "-" if r["target_id"] is None else r["target_id"], r["target"] or "-"]
                for r in rows
            ],
        )
    )
    return 0
