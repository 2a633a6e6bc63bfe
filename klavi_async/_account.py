"""
Which Klavi account a client acts for, as a fingerprint: what a fleet's workers sharing
one account's rate limit are keyed by, never the key itself.
"""

from __future__ import annotations

import hashlib

from ._tokens import ClientCredentials, StaticToken

__all__ = ["account_fingerprint"]


def account_fingerprint(base_url: str, provider: object) -> str | None:
    """
    16 hex digits of a SHA-256 of the base URL and the access key (or the static token):
    the same for every client of one account on one Klavi, telling neither.  None for a
    token source that names no account (a callable or a `TokenProvider` of the caller's).
    """
    if isinstance(provider, ClientCredentials):
        who = f"key:{provider.access_key}"
    elif isinstance(provider, StaticToken):
        who = f"token:{provider.token}"
    else:
        return None
    material = f"klavi-async account\0{base_url.rstrip('/')}\0{who}".encode()
    return hashlib.sha256(material).hexdigest()[:16]
