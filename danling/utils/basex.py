"""Base-N encoding of integers, used for short, sortable time strings."""

from __future__ import annotations

import string
from datetime import datetime

__all__ = ["BASE62_ALPHABET", "base62_decode", "base62_encode", "get_time_str"]

# Digits, then upper case, then lower case: ASCII order, so equal-length codes sort like the numbers they encode.
BASE62_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase


def base62_encode(number: int) -> str:
    """Encode a non-negative integer in base 62.

    Examples:
        >>> base62_encode(0), base62_encode(61), base62_encode(62)
        ('0', 'z', '10')
        >>> base62_decode(base62_encode(123456789))
        123456789
    """
    if number < 0:
        raise ValueError(f"base62_encode takes a non-negative integer, got {number}")
    digits = []
    while True:
        number, remainder = divmod(number, 62)
        digits.append(BASE62_ALPHABET[remainder])
        if number == 0:
            return "".join(reversed(digits))


def base62_decode(code: str) -> int:
    """Decode a base-62 string made by [`base62_encode`][danling.utils.basex.base62_encode]."""
    number = 0
    for char in code:
        index = BASE62_ALPHABET.find(char)
        if index < 0:
            raise ValueError(f"{code!r} is not base 62: {char!r} is not in {BASE62_ALPHABET!r}")
        number = number * 62 + index
    return number


def get_time_str(time: datetime | None = None) -> str:
    """A short string for a point in time, to the microsecond, that sorts in time order.

    Examples:
        >>> get_time_str(datetime(2026, 1, 2, 3, 4, 5, 6))
        'JDGk6YeX4g'
        >>> get_time_str(datetime(2026, 1, 2)) < get_time_str(datetime(2026, 1, 3))
        True
    """
    time = time or datetime.now()
    return base62_encode(int(time.strftime("%y%m%d%H%M%S%f")))
