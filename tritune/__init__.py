"""tritune: a CNN, its optimized variants, a Triton model repository, and a live SLO tuner for it."""

__version__ = "0.1.0"
