"""
Test helpers: `KlaviEmulator`, a fake Klavi with fault injection, and its faults.

The pytest fixtures `klavi_emulator` and `klavi_client` come with the package (see
`klavi_async.testing._plugin`).
"""

from __future__ import annotations

from ._emulator import (
    AUTOMATIC_PIX_STATUSES,
    CANCELLABLE,
    KLAVI_STATUSES,
    REFUSAL_CODE,
    KlaviEmulator,
    Payment,
    RequestRecord,
)
from ._faults import FAULT_NAMES, Fault, RandomFaults

__all__ = [
    "AUTOMATIC_PIX_STATUSES",
    "CANCELLABLE",
    "FAULT_NAMES",
    "KLAVI_STATUSES",
    "REFUSAL_CODE",
    "Fault",
    "KlaviEmulator",
    "Payment",
    "RandomFaults",
    "RequestRecord",
]
