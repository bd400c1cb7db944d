"""Synthetic plates, scenes and reader patches for training without real data."""
from .preview import preview_grid
from .render import render_plate
from .scene import PlateInstance, Scene, make_plate_patch, make_scene
from .text import FORMAT_WEIGHTS, random_text

__all__ = ["FORMAT_WEIGHTS", "PlateInstance", "Scene", "make_plate_patch", "make_scene", "preview_grid",
           "random_text", "render_plate"]
