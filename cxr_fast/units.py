"""Byte units, spelled once: every GiB the project prints or compares is 2**30 bytes."""

from __future__ import annotations

MIB = 1024**2
GIB = 1024**3
