"""
The process the CLI owns: start it with glibc's allocator in the state a busy service is in.

glibc serves a block above its mmap threshold (128 KiB at start) with its own `mmap`, and
raises the threshold (up to 32 MiB) only when such a block is freed at full size.  asyncio
reads each response into a fresh 256 KiB buffer and shrinks it, so a process that has
never freed a large block pays `mmap`, `mremap` and `munmap`, and fresh zeroed pages, on
every response.  `cancel_many` keeps its memory bounded, so a process that does nothing
but cancel never frees a large block and stays in that slow state: measured in issue 4,
such a process used about 1.3x raw aiohttp's CPU per cancel where a long-lived one (or
one that once freed a large block) used about 1.05x (docs/performance.md, "Method").

`start_in_fast_allocator_state()` frees one 1 MiB block up front, which raises the
threshold above asyncio's buffer, so later buffers come from the heap.  It costs one
allocation elsewhere (musl, macOS, Windows, or glibc with a fixed `M_MMAP_THRESHOLD`),
where it changes nothing.

Only the commands that own their process call it (`cancel-batch`, `worker`, `demo`).  The
library itself must never: a user's process and its allocator belong to the user.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["KEEP_ALLOCATOR_ENV", "raise_mmap_threshold", "start_in_fast_allocator_state"]

KEEP_ALLOCATOR_ENV: Final = "KLAVI_ASYNC_KEEP_ALLOCATOR"
"""Set to 1 to leave the allocator as it is: a benchmark and diagnostic switch."""

_BLOCK_SIZE: Final = 1 << 20
"""Over any threshold glibc starts with, and far over asyncio's 256 KiB read buffer."""


def raise_mmap_threshold() -> None:
    """
    Allocate and free one 1 MiB block, so glibc raises its mmap threshold above it.
    """
    block = bytearray(_BLOCK_SIZE)  # over the threshold: glibc mmaps it
    del block  # freed whole: glibc sets the threshold to its size


def start_in_fast_allocator_state() -> bool:
    """
    Raise glibc's mmap threshold for this process, unless `KLAVI_ASYNC_KEEP_ALLOCATOR=1`.

    Returns whether it did.  Call it first thing in a command that owns its process.
    """
    if os.environ.get(KEEP_ALLOCATOR_ENV) == "1":
        return False
    raise_mmap_threshold()
    return True
