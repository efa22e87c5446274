"""Values read from a dump are untrusted: what a crashed kernel (or whoever
crafted the file) wrote there reaches READMEs, markers, ``info`` and the log
only through :func:`printable`; numbers only through :func:`bounded_int`."""
from __future__ import annotations

import re
from typing import Optional

#: longest text value kept from a dump (a utsname field has 64 characters)
MAX_TEXT = 256
#: largest CRASHTIME / time stamp believed: the last second of the year 9999
MAX_TIME = 253402300799

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def printable(value: str, limit: int = MAX_TEXT) -> str:
    """``value`` on one line: control characters (newlines, escape sequences,
    bidirectional overrides) as ``\\xNN``/``\\uNNNN``, cut to ``limit``
    characters with ``...``."""
    text = _UNSAFE.sub(_escape, value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def bounded_int(value: Optional[str], minimum: int = 0, maximum: int = (1 << 63) - 1,
                base: int = 10) -> Optional[int]:
    """``value`` as an integer when it is one (ASCII digits, at most 40 of them)
    within ``minimum..maximum``; None otherwise."""
    if value is None:
        return None
    text = value.strip()
    digits = text[2:] if base == 16 and text[:2].lower() == "0x" else text.lstrip("-")
    if not digits or len(digits) > 40 or not digits.isascii() or not digits.isalnum():
        return None
    try:
        number = int(text, base)
    except ValueError:
        return None
    return number if minimum <= number <= maximum else None
