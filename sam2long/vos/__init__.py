"""Semi-supervised VOS over a dataset with SAM 2 or SAM2Long (the library behind
``tools/vos_inference.py`` and the ``sam2long-vos`` command).

* :mod:`sam2long.vos.dataset`: videos, shards, input masks, output PNGs and resume markers
  (file-level, no model);
* :mod:`sam2long.vos.protocol`: how input masks are given to a predictor and objects tracked;
* :mod:`sam2long.tracker_spec` (shared with ``sam2long segment`` and the demo): which predictor to
  build (SAM 2 or SAM2Long) and its fingerprint;
* :mod:`sam2long.vos.run`: one video end to end, peak memory, the run summary and the run loop;
* :mod:`sam2long.vos.cli`: the command line, ``main(argv) -> exit status``.
"""
