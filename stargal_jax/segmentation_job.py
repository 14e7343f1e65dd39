"""Segmentation jobs run through `launch.py` (filled in by the segmentation work; see configs/segmentation.py)."""

JOBS: dict = {}
