"""Synthetic plates, scenes and reader patches for training without real data."""
from .preview import preview_grid
from .render import render_plate
from .scene import PlateInstance, Scene, make_plate_patch, make_scene
from .text import catalogue, random_text, use_countries

__all__ = ["PlateInstance", "Scene", "catalogue", "make_plate_patch", "make_scene", "preview_grid", "random_text",
           "render_plate", "use_countries"]
