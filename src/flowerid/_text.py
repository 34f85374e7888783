"""Small helpers for the words flowerid prints: a line sink, an exception's first line, a percentage."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

Log = Callable[[str], None]  # where progress lines go: print, a logger's info, or nothing


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def pct(x: Any, digits: int = 2, missing: str = "-") -> str:
    """`0.9645` -> `96.45%`; anything that is not a number -> `missing`."""
    return f"{x:.{digits}%}" if isinstance(x, int | float) else missing


def shown(text: object) -> str:
    """Text from outside (a file name, a category name from someone's cat_to_name.json) made safe for a
    terminal: control characters, escape sequences and line breaks print as `\\x1b`, `\\n`, ... instead of
    recolouring, retitling or faking lines; direction overrides as `\\u202e`, so text reads as it is."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) == "Cc" or ch in _BIDI else ch
        for ch in text
    )


# Direction overrides and isolates: a name holding U+202E prints "rose.exe" as "exe.esor" (Trojan Source).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def utf8_safe(text: str) -> str:
    """Text that can be written as UTF-8 or drawn: bytes of a name that is not UTF-8 (which Python holds as
    surrogates) as `\\xNN`, any other lone surrogate (a JSON `\\ud800`) as `\\ud800`."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")
