"""cxr-fast: the chest X-ray image-resolution study, made fast.

The core package holds the data, training, metrics and study code; loader backends are
importable as ``cxr_fast.loaders`` and the benchmarks as ``cxr_fast.bench``.
"""

__version__ = "0.1.0"
