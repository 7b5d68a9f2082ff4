"""Box tracking (single-object tracking, SOT) benchmarks with any tracker of the library.

* :mod:`sam2long.sot.datasets`: readers of LaSOT, LaSOT-ext, GOT-10k, TrackingNet, OTB100, UAV123
  and NfS in the layouts their official downloads unpack to (no model);
* :mod:`sam2long.sot.results`: the benchmarks' result files (per-sequence ``.txt``, GOT-10k's
  server layout, submission zips), written atomically, and read back;
* :mod:`sam2long.sot.run`: one sequence end to end (first box -> masks -> tight boxes) and the
  resumable, sharded loop over a dataset (``sam2long sot``);
* :mod:`sam2long.sot.evaluate`: one-pass evaluation as pytracking computes it, and GOT-10k's AO
  and success rates as the ``got10k`` toolkit does (``sam2long eval sot``);
* :mod:`sam2long.sot.report`: the SAM2Long paper's Table 5 beside measured numbers;
* :mod:`sam2long.sot.cli`: both command lines;
* :mod:`sam2long.sot.vot`: the VOT toolkit's tracker command over TraX (``sam2long-vot``).
"""
