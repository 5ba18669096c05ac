"""The conditional-request headers of a context write: the version a compare-and-set expects."""

from __future__ import annotations

import re

from mcpdb.errors import InvalidHeader

_VERSION = re.compile(r"[0-9]{1,19}")  # ASCII digits (str.isdigit takes "²", which int() refuses), 64 bits
MAX_VERSION = 2**63 - 1


def expected_version(if_match: str | None, if_none_match: str | None) -> int | None:
    """``If-Match: <version>`` (quoted or bare) for CAS; ``If-None-Match: *`` for create-only (0)."""
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise InvalidHeader("If-None-Match only supports '*' (create only)")
        return 0
    if if_match is None:
        return None
    text = if_match.strip().removeprefix("W/").strip('"')
    if not _VERSION.fullmatch(text) or int(text) > MAX_VERSION:
        raise InvalidHeader(f"If-Match must be a version number, got {if_match[:64]!r}")
    return int(text)
