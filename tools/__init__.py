"""Command-line tools (dataset inference); run them as scripts, e.g. ``python tools/vos_inference.py``."""
