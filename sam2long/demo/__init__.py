"""The interactive web demo (``sam2long demo``, ``python -m sam2long.demo``; needs the ``[demo]`` extra).

:mod:`sam2long.demo.session` holds the logic (no Gradio needed), :mod:`sam2long.demo.plots` the
pathway plot, :mod:`sam2long.demo.app` the Gradio page and :mod:`sam2long.demo.launch` the command.
"""

from __future__ import annotations

from sam2long.demo.launch import main

__all__ = ["main"]
