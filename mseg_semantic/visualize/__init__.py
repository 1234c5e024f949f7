"""Pictures of label maps: a fixed colour palette per taxonomy, colour maps, and overlays with class names."""

from mseg_semantic.visualize.overlay import colorize, label_points, overlay
from mseg_semantic.visualize.palette import palette

__all__ = ["colorize", "label_points", "overlay", "palette"]
