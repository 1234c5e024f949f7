"""The one config reader: types, nested keys, the common message format, overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from mseg_semantic.configs import ConfigError, check, read_config, set_key, to_plain
from mseg_semantic.errors import InputError


@dataclass
class Part:
    name: str
    size: int | None = None


@dataclass
class Whole:
    parts: list[Part]
    crop: tuple[int, int] = (5, 5)
    scales: tuple[float, ...] = (1.0,)
    rate: float = 0.1
    on: bool = False
    extra: dict[str, Any] | None = None
    inner: Part = field(default_factory=lambda: Part("x"))

    def __post_init__(self) -> None:
        check(self.rate < 1, "rate", f"must be below 1, got {self.rate}")


def read(data: Any, **options: Any) -> Whole:
    return read_config(Whole, data, source="f.yaml", shorthand={Part: "name"}, **options)


def test_values_are_converted_to_the_annotations():
    whole = read({"parts": ["a", {"name": "b", "size": "1e3"}], "crop": 7, "scales": [1, 2], "rate": "1e-4"})
    assert whole.parts == [Part("a"), Part("b", 1000)]
    assert (whole.crop, whole.scales, whole.rate) == ((7, 7), (1.0, 2.0), 1e-4)
    assert to_plain(whole)["crop"] == [7, 7] and to_plain(whole)["inner"] == {"name": "x", "size": None}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"parts": [], "rte": 1}, "f.yaml: key 'rte': unknown key, did you mean 'rate'? (known: parts, crop, "),
        ({"parts": [], "z": 1}, "f.yaml: key 'z': unknown key (known: parts, crop, scales, rate, on, extra, inner)"),
        ({"parts": [{"name": "a", "size": "abc"}]}, "f.yaml: key 'parts.0.size': expected int, got 'abc'"),
        ({"parts": [], "rate": 2.5e0, "on": True}, "f.yaml: key 'rate': must be below 1, got 2.5"),
        ({"parts": [], "on": "yes"}, "f.yaml: key 'on': expected bool, got 'yes'"),
        ({"parts": [], "crop": [1, 2, 3]}, "f.yaml: key 'crop': expected 2 values, got [1, 2, 3]"),
        ({"parts": [], "scales": 1.0}, "f.yaml: key 'scales': expected a list, got 1.0"),
        ({"parts": [], "inner": {"size": 1}}, "f.yaml: key 'inner.name': missing required key"),
        ({"parts": [], "inner": {"name": None}}, "f.yaml: key 'inner.name': expected str, got null"),
        ({"parts": [], "extra": [1]}, "f.yaml: key 'extra': expected a mapping, got [1]"),
        ({}, "f.yaml: key 'parts': missing required key"),
        ([1], "f.yaml: expected a mapping, got [1]"),
    ],
)
def test_every_problem_has_one_format(data, message):
    with pytest.raises(ConfigError) as error:
        read(data)
    assert str(error.value).startswith(message)
    assert isinstance(error.value, InputError)


def test_spelling_aliases_ignore_and_origins():
    @dataclass(frozen=True)
    class Stage:
        num_blocks: tuple[int, ...]
        crop_h: int = 1

    assert read_config(Stage, {"NUM_BLOCKS": [1], "num_blocks": [2]}, spelling=str.upper).num_blocks == (2,)
    with pytest.raises(ConfigError, match=r"^x: key 'NUM_BLOKS': unknown key, did you mean 'NUM_BLOCKS'\?"):
        read_config(Stage, {"NUM_BLOKS": [1]}, source="x", spelling=str.upper)
    data = {"num_blocks": [1], "test_h": 3, "junk": 1}
    assert read_config(Stage, data, aliases={"test_h": "crop_h"}, ignore=["junk"]).crop_h == 3
    with pytest.raises(ConfigError, match=r"^--set: key 'num_blocks.0': expected int, got 'a'$"):
        read_config(Stage, {"num_blocks": ["a"]}, source="x", origins={"num_blocks": "--set"})


def test_set_key_checks_the_key_and_fills_in_sections():
    raw = {"parts": ["a"]}
    raw = set_key(raw, Whole, "parts.0.size", 3, source="--set", shorthand={Part: "name"})
    raw = set_key(raw, Whole, "inner.size", 4, source="--set")
    assert raw == {"parts": [{"name": "a", "size": 3}], "inner": {"size": 4}}
    with pytest.raises(ConfigError, match=r"^--set: key 'parts.1': index out of range \(the list has 1 item\(s\)\)$"):
        set_key(raw, Whole, "parts.1.size", 1, source="--set")
    with pytest.raises(ConfigError, match=r"^--set: key 'inner.sise': unknown key, did you mean 'size'\? "):
        set_key(raw, Whole, "inner.sise", 1, source="--set")
    with pytest.raises(ConfigError, match=r"^--set: key 'rate': is a value, not a section$"):
        set_key(raw, Whole, "rate.x", 1, source="--set")
    assert set_key(raw, Whole, "extra.anything.deep", 1, source="--set")["extra"] == {"anything": {"deep": 1}}


def test_errors_of_a_sub_config_are_placed_inside_the_enclosing_one():
    error = ConfigError("expected int, got 'a'", "STAGE1.NUM_BLOCKS.0", "HRNet config")
    assert str(error.inside("model.hrnet").located("run.yaml")) == (
        "run.yaml: key 'model.hrnet.STAGE1.NUM_BLOCKS.0': expected int, got 'a'"
    )
