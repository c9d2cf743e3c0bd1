"""How strong a bearer token must be to guard a server reachable off loopback.

The config refuses a weak one when the server binds elsewhere, and the dashboard's sign-in uses the
same rule; both read it here.
"""

from __future__ import annotations

import math
from collections import Counter

MIN_TOKEN_CHARS = 32
# Shannon entropy of the token's own characters times its length: about 210 for
# secrets.token_urlsafe(32), 250 for token_hex(32); a word repeated or a short alphabet falls short.
MIN_TOKEN_BITS = 128
MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"  # noqa: S105 - how to make one


def token_weakness(token: str) -> str | None:
    """Why ``token`` is too weak to guard a server reachable off loopback; None when it is strong
    enough (MIN_TOKEN_CHARS characters and about MIN_TOKEN_BITS bits). Never echoes the token."""
    if len(token) < MIN_TOKEN_CHARS:
        return f"it has {len(token)} characters, under {MIN_TOKEN_CHARS}"
    counts = Counter(token).values()
    bits = sum(n * math.log2(len(token) / n) for n in counts)
    if bits < MIN_TOKEN_BITS:
        return f"its characters repeat too much to be random: about {bits:.0f} bits, under {MIN_TOKEN_BITS}"
    return None
