"""
The version, written here once: the build reads it (pyproject.toml, `[tool.hatch.version]`)
and the code imports it, so neither needs `importlib.metadata` (and its zipfile and csv).
"""

from __future__ import annotations

__all__ = ["__version__", "version"]

__version__ = "0.1.0"
version = __version__
