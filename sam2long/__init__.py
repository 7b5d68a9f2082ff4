"""SAM2Long: a training-free memory tree on top of SAM 2 (see README)."""
