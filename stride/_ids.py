"""Sortable unique ids (ULID layout: 48-bit millisecond time + 80 random bits, Crockford base32).

Ids made in one process are strictly increasing, even within one millisecond, so
`ORDER BY id` is creation order, which the stores rely on for cheap cursor pagination.
"""

from __future__ import annotations

import functools
import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = tuple(high + low for high in _ALPHABET for low in _ALPHABET)  # 10 bits -> 2 digits
_RANDOM_MASK = (1 << 80) - 1
_lock = threading.Lock()
_last_ms = 0
_last_random = 0


def _encode(value: int, length: int) -> str:
    """The low `length` Crockford base32 digits of `value`, most significant first.

    Two digits per lookup: a loop over single digits made id generation the largest cost
    of dispatching a big batch (20,000 ids for 10,000 events).
    """
    text = "".join([_PAIRS[(value >> shift) & 1023] for shift in _shifts((length + 1) // 2)])
    return text[len(text) - length:]


@functools.cache
def _shifts(pairs: int) -> tuple[int, ...]:
    return tuple(range(10 * (pairs - 1), -1, -10))


def new_id(prefix: str = "") -> str:
    """A new 26-character sortable id, optionally prefixed (`prefix` + id)."""
    global _last_ms, _last_random
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            now_ms = _last_ms
            _last_random = (_last_random + 1) & _RANDOM_MASK
        else:
            _last_ms = now_ms
            _last_random = int.from_bytes(os.urandom(10), "big") >> 1
        value = (now_ms << 80) | _last_random
    return prefix + _encode(value, 26)
