"""Values of command-line options, parsed one way for every front end.

Each parser returns the value or None when the text is not one; the caller
words the usage error for its own grammar. No int() on raw text: it accepts
" 80", "+80", "٣" and, for long digit strings, raises instead of refusing.
"""

from srt_launcher import sandbox

_MAX_FD = (1 << 31) - 1
_BYTE_SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def is_decimal(text: str, max_digits: int) -> bool:
    return 0 < len(text) <= max_digits and all("0" <= char <= "9" for char in text)


def port(text: str) -> int | None:
    """A TCP port, 1-65535, written in at most five ASCII digits."""
    if not is_decimal(text, 5) or not 1 <= int(text) <= 65535:
        return None
    return int(text)


def fd(text: str) -> int | None:
    """A file descriptor number, 0 to 2**31-1."""
    if not is_decimal(text, 10) or int(text) > _MAX_FD:
        return None
    return int(text)


def seconds(text: str) -> float | None:
    """A positive decimal number of seconds (``0.5``, ``30``), at most a year."""
    whole, dot, fraction = text.partition(".")
    if not (is_decimal(whole, 9) or (dot and not whole)) or (dot and not is_decimal(fraction, 9)):
        return None
    value = float(text)
    return value if 0 < value <= 366 * 86400 else None


def rlimit(name: str, text: str) -> tuple[int, int] | None:
    """``N`` (soft = hard) or ``SOFT:HARD``; either may be ``unlimited``;
    byte-valued limits take K, M, G, T suffixes (×1024)."""
    soft_text, colon, hard_text = text.partition(":")
    soft = _rlimit_value(soft_text, name in sandbox.BYTE_RLIMITS)
    hard = _rlimit_value(hard_text, name in sandbox.BYTE_RLIMITS) if colon else soft
    if soft is None or hard is None:
        return None
    return soft, hard


def _rlimit_value(text: str, bytes_: bool) -> int | None:
    if text == "unlimited":
        return sandbox.RLIM_INFINITY
    multiplier = 1
    if bytes_ and text[-1:] in _BYTE_SUFFIXES:
        multiplier = _BYTE_SUFFIXES[text[-1]]
        text = text[:-1]
    if not is_decimal(text, 20):
        return None
    value = int(text) * multiplier
    return value if value <= sandbox.RLIM_MAX else None


def octal_mode(text: str) -> int | None:
    """An octal mode up to 07777."""
    if not 0 < len(text) <= 5 or not all("0" <= char <= "7" for char in text):
        return None
    value = int(text, 8)
    return value if value <= 0o7777 else None


def env_name(text: str) -> bool:
    return bool(text) and "=" not in text
