"""`mseg taxonomy` and `mseg remap` as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mseg_semantic.cli import main
from mseg_semantic.fileio import read_label
from mseg_semantic.taxonomy import class_names, get_taxonomy


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_python_dash_m_and_console_script_are_the_same_cli():
    for cmd in ([sys.executable, "-m", "mseg_semantic"], [shutil.which("mseg") or "mseg"]):
        if cmd[0] == "mseg":
            pytest.skip("console script not installed")
        result = subprocess.run([*cmd, "taxonomy", "show", "camvid-11"], capture_output=True, text=True, check=True)
        assert "Bicyclist" in result.stdout and "bicyclist (127), bicycle (175)" in result.stdout


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "taxonomy" in out and "remap" in out


def test_taxonomy_list(capsys):
    code, out, _ = run(capsys, "taxonomy", "list", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 35
    assert {"name": "camvid-11", "kind": "test", "num_classes": 11} | {"description": rows[18]["description"]} in rows
    code, out, _ = run(capsys, "taxonomy", "list", "--kind", "test")
    assert code == 0 and "pascal-context-60" in out and "ade20k-150" not in out


def test_taxonomy_show_json(capsys):
    code, out, _ = run(capsys, "taxonomy", "show", "ade20k-150", "--json")
    data = json.loads(out)
    assert code == 0 and data["num_classes"] == 150
    minibike = next(c for c in data["classes"] if c["name"] == "minibike")
    assert minibike["universal"] == ["motorcycle"] and minibike["universal_ids"] == [178]
    signboard = next(c for c in data["classes"] if c["name"] == "signboard")
    assert signboard["universal_ids"] == [255]
    assert minibike["remap"]["ade20k-150-relabeled"] == "motorcycle"


def test_taxonomy_show_text_for_each_kind(capsys):
    for name, needle in [
        ("universal", "a bag carried by a strap"),
        ("naive", "mapillary-public65:Bird"),
        ("cityscapes-34", "-> cityscapes-19"),
        ("camvid-32", "Bicyclist"),
        ("voc2012", "person (125), rider_other (126), bicyclist (127), motorcyclist (128)"),
    ]:
        code, out, _ = run(capsys, "taxonomy", "show", name)
        assert code == 0 and needle in out, name


def test_taxonomy_map(capsys):
    code, out, _ = run(capsys, "taxonomy", "map", "--from", "universal", "--to", "camvid-11", "--json")
    rows = json.loads(out)["map"]
    assert code == 0 and len(rows) == 194
    assert rows[175] == {"source_id": 175, "source": "bicycle", "target_id": 10, "target": "Bicyclist"}
    assert rows[0]["target"] is None
    code, out, _ = run(capsys, "taxonomy", "map", "--from", "idd-39", "--to", "universal")
    assert code == 0 and "rider" in out and "motorcyclist" in out
    code, out, _ = run(capsys, "taxonomy", "map", "--from", "cityscapes-34", "--to", "cityscapes-19", "--json")
    rows = json.loads(out)["map"]
    assert rows[7] == {"source_id": 7, "source": "road", "target_id": 0, "target": "road"}
    assert rows[-1]["source_id"] == 255 and rows[-1]["target_id"] == 255


def test_user_mistakes_exit_2_without_traceback(capsys):
    code, _, err = run(capsys, "taxonomy", "show", "camvid11")
    assert code == 2 and "unknown taxonomy 'camvid11'" in err and "Traceback" not in err
    code, _, err = run(capsys, "taxonomy", "map", "--from", "camvid-11", "--to", "universal")
    assert code == 2 and "no label mapping" in err


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def test_remap_folder_cityscapes_34_to_19(tmp_path, capsys):
    cs34 = class_names("cityscapes-34")
    raw = np.array(
        [[cs34.index("road"), cs34.index("car"), 0], [cs34.index("caravan"), 255, cs34.index("sky")]], dtype=np.uint8
    )
    src, dst = tmp_path / "gtFine", tmp_path / "gtFine_19"
    write_png(src / "a" / "x_labelIds.png", raw)
    write_png(src / "b" / "y_labelIds.png", raw[::-1])
    before = (src / "a" / "x_labelIds.png").read_bytes()
    code, out, _ = run(
        capsys, "remap", "--from", "cityscapes-34", "--to", "cityscapes-19", str(src), str(dst), "--quiet"
    )
    assert code == 0 and "wrote 2 label files" in out
    cs19 = class_names("cityscapes-19")
    got = read_label(dst / "a" / "x_labelIds.png")
    assert got.dtype == np.uint8
    assert got.tolist() == [[0, cs19.index("car"), 255], [255, 255, cs19.index("sky")]]
    assert read_label(dst / "b" / "y_labelIds.png").tolist() == got[::-1].tolist()
    assert (src / "a" / "x_labelIds.png").read_bytes() == before  # inputs untouched
    assert not [p for p in dst.rglob("*") if p.name.startswith(".")]  # no temporary files left

    # Outputs exist now: refused without --overwrite, replaced with it.
    code, _, err = run(capsys, "remap", "--from", "cityscapes-34", "--to", "cityscapes-19", str(src), str(dst))
    assert code == 2 and "--overwrite" in err
    code, _, _ = run(
        capsys,
        "remap",
        "--from",
        "cityscapes-34",
        "--to",
        "cityscapes-19",
        str(src),
        str(dst),
        "--overwrite",
        "--quiet",
    )
    assert code == 0


def test_remap_refuses_bad_values_and_names_the_file(tmp_path, capsys):
    src, dst = tmp_path / "in", tmp_path / "out"
    write_png(src / "bad.png", np.array([[0, 40]], dtype=np.uint8))  # cityscapes-34 has ids 0..33
    code, _, err = run(
        capsys, "remap", "--from", "cityscapes-34", "--to", "cityscapes-19", str(src), str(dst), "--quiet"
    )
    assert code == 2 and "bad.png" in err and "[40]" in err
    assert not (dst / "bad.png").exists()
    code, _, _ = run(
        capsys,
        "remap",
        "--from",
        "cityscapes-34",
        "--to",
        "cityscapes-19",
        str(src),
        str(dst),
        "--quiet",
        "--non-strict",
    )
    assert code == 0 and read_label(dst / "bad.png").tolist() == [[255, 255]]


def test_remap_refuses_writing_into_the_input(tmp_path, capsys):
    write_png(tmp_path / "a.png", np.zeros((2, 2), np.uint8))
    code, _, err = run(capsys, "remap", "--from", "idd-40", "--to", "idd-39", str(tmp_path), str(tmp_path / "sub"))
    assert code == 2 and "must not be the input folder" in err
    code, _, err = run(
        capsys, "remap", "--from", "idd-40", "--to", "idd-39", str(tmp_path / "nope"), str(tmp_path / "o")
    )
    assert code == 2 and "does not exist" in err


def test_remap_colour_coded_camvid_32(tmp_path, capsys):
    colors = get_taxonomy("camvid-32").colors
    names32 = class_names("camvid-32")
    picks = [names32.index(n) for n in ("Sky", "Road", "Child", "Bicyclist")]
    rgb = np.array([[colors[i] for i in picks]], dtype=np.uint8)
    write_png(tmp_path / "in" / "f_L.png", rgb[:, :, ::-1])  # OpenCV writes BGR
    code, _, _ = run(
        capsys,
        "remap",
        "--from",
        "camvid-32",
        "--to",
        "camvid-11",
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        "--quiet",
    )
    names11 = class_names("camvid-11")
    assert code == 0
    assert read_label(tmp_path / "out" / "f_L.png").tolist() == [
        [names11.index("Sky"), names11.index("Road"), 255, names11.index("Bicyclist")]
    ]


def test_remap_to_universal_and_uint16_output(tmp_path, capsys):
    write_png(tmp_path / "in" / "p.png", np.array([[0, 458]], dtype=np.uint16))
    code, _, _ = run(
        capsys,
        "remap",
        "--from",
        "pascal-context-460",
        "--to",
        "pascal-context-60",
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        "--quiet",
    )
    assert code == 0
    assert read_label(tmp_path / "out" / "p.png").tolist() == [[1, class_names("pascal-context-60").index("wood")]]
    write_png(tmp_path / "in2" / "s.png", np.array([[0, 1]], dtype=np.uint8))
    code, _, _ = run(
        capsys,
        "remap",
        "--from",
        "sunrgbd-38",
        "--to",
        "universal",
        str(tmp_path / "in2"),
        str(tmp_path / "out2"),
        "--quiet",
    )
    assert code == 0 and read_label(tmp_path / "out2" / "s.png").tolist() == [[255, 191]]


def test_unreadable_label_file(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.png").write_text("<html>not a png</html>")
    code, _, err = run(
        capsys, "remap", "--from", "idd-40", "--to", "idd-39", str(tmp_path / "in"), str(tmp_path / "out"), "--quiet"
    )
    assert code == 2 and "broken.png" in err and "not a readable image" in err
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []
