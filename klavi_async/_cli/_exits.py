"""
The exit statuses of every `klavi-async` command (imports nothing: `main()` needs them).
"""

from __future__ import annotations

from typing import Final

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_NOT_FINAL", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
"""Some items failed for good."""
EXIT_USAGE: Final = 2
"""A bad flag, missing or rejected credentials, an unreadable input."""
EXIT_NOT_FINAL: Final = 3
"""Some items are not final yet: a rerun sends them."""
EXIT_INTERRUPTED: Final = 130
