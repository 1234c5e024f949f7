"""Inference: the original single/multi-scale sliding-window algorithm and the demo over images and videos."""

from mseg_semantic.fileio import read_image
from mseg_semantic.inference.config import InferenceConfig, load_config
from mseg_semantic.inference.demo import DemoReport, collect_inputs, run_demo
from mseg_semantic.inference.segmenter import Prediction, Segmenter
from mseg_semantic.presets import preset_names

__all__ = [
    "DemoReport",
    "InferenceConfig",
    "Prediction",
    "Segmenter",
    "collect_inputs",
    "load_config",
    "preset_names",
    "read_image",
    "run_demo",
]
