"""The version, spelled once: pyproject reads it from here (``dynamic = ["version"]``), the CLI prints it."""

__version__ = "0.1.0"
