"""Viewer-side data sources. Plain classes, no Textual; they return the frozen types of `model`."""
