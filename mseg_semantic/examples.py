"""Example inputs that ship with the package (MIT-licensed dashcam photo and clip; see assets/examples/ATTRIBUTION.md).

>>> from mseg_semantic.examples import example_path
>>> example_path("dashcam").name
'dashcam_comma2k19.png'
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mseg_semantic.errors import InputError

EXAMPLES = {
    "dashcam": "dashcam_comma2k19.png",  # 1164x874 dashcam photo, comma.ai (MIT)
    "freeway": "freeway_udacity.mp4",  # 1280x720, 25 fps, 38 frames, Udacity (MIT)
}


def example_path(name: str = "dashcam") -> Path:
    """Path of a bundled example input: ``dashcam`` (image) or ``freeway`` (video)."""
    if name not in EXAMPLES:
        raise InputError(f"unknown example {name!r}; examples: {', '.join(EXAMPLES)}")
    return Path(str(resources.files("mseg_semantic").joinpath("assets", "examples", EXAMPLES[name])))
