"""The installed distribution's version."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _dist_version

__all__ = ["version"]

try:
    version = _dist_version("klavi-async")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    version = "0.0.0+unknown"
