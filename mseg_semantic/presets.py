"""Inference preset names: which presets exist, which one a model runs with, which one an evaluation uses.

A preset is a named set of test-time settings (short side, scales, window size) read from a YAML file shipped in
``mseg_semantic/config/test/`` (:func:`mseg_semantic.inference.config.load_config` reads them). The names and the
choice between them live here, below the zoo, the exporter and the :class:`~mseg_semantic.Segmenter` that all
need them, so that each preset name is written once and the rule "the preset given, else the model's own, else
the default" is one function (:func:`preset_for`) rather than one copy per caller.
"""

from __future__ import annotations

from typing import Any, Final

#: The preset of a model that recommends none: the original demo's multi-scale setting.
DEFAULT_PRESET: Final = "360_ms"
#: The preset ``mseg eval`` uses for a model that recommends none: the original evaluation's single scale.
EVAL_PRESET: Final = "360_ss"

#: Every preset by name: its YAML file below ``mseg_semantic/config/test/``.
PRESET_FILES: dict[str, str] = {
    EVAL_PRESET: "default_config_360_ss.yaml",
    DEFAULT_PRESET: "default_config_360_ms.yaml",
    "720_ss": "default_config_720_ss.yaml",
    "720_ms": "default_config_720_ms.yaml",
    "1080_ss": "default_config_1080_ss.yaml",
    "1080_ms": "default_config_1080_ms.yaml",
    "batched_480": "480/default_config_batched_ss.yaml",
    "batched_720": "720/default_config_batched_ss.yaml",
    "batched_1080": "1080/default_config_batched_ss.yaml",
    "compact_360_ss": "compact_360_ss.yaml",  # the bundled camvid11-compact model's own
}


def preset_names() -> list[str]:
    """The preset names, in the order the help texts list them."""
    return list(PRESET_FILES)


def preset_for(model: Any = None, given: Any = None, default: str = DEFAULT_PRESET) -> Any:
    """The preset to run ``model`` with: ``given`` unless None (a name, a YAML path or a config), else the model's
    own (``model.preset``: set by :func:`mseg_semantic.load_model`, or a zoo entry's), else ``default``."""
    if given is not None:
        return given
    return getattr(model, "preset", None) or default


__all__ = ["DEFAULT_PRESET", "EVAL_PRESET", "PRESET_FILES", "preset_for", "preset_names"]
