"""The randomization of a retention campaign: treatment or control from a subscriber's own hash.

Spark hands over `xxhash64(subscriber_id)` (an int64); the campaign's salt is mixed in here by the
splitmix64 finalizer, so a subscriber's group depends only on its own id and the salt: the same list
splits the same way on every run and on every machine, adding or removing other subscribers moves no
one, and two salts give independent splits (what the A/A simulation and the balance check re-split by).
Numpy only, no Spark: the driver splits the list it holds.
"""

from __future__ import annotations

import hashlib

import numpy as np

_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_TOP_53 = 2.0**-53  # (x >> 11) · 2⁻⁵³: the top 53 bits as a float in [0, 1)


def salt64(text: str) -> int:
    """A stable 64-bit salt from a name: the first 8 bytes of sha256 (big-endian), not Python's hash(),
    which changes between processes."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _as_uint64(id_hash: np.ndarray) -> np.ndarray:
    """The bits of Spark's int64 hashes as uint64 (a uint64 array is taken as it is)."""
    arr = np.asarray(id_hash)
    if arr.dtype == np.uint64:
        return arr
    return arr.astype(np.int64, copy=False).view(np.uint64)


def unit(id_hash: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) per subscriber: (id hash XOR salt) through the splitmix64 finalizer, whose
    avalanche makes every output bit depend on every input bit, so nearby hashes or salts do not give
    nearby draws."""
    if not 0 <= salt < 2**64:
        raise ValueError(f"salt {salt} is not an unsigned 64-bit integer")
    x = _as_uint64(id_hash) ^ np.uint64(salt)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _MIX_1
        x ^= x >> np.uint64(27)
        x *= _MIX_2
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * _TOP_53


def is_control(u: np.ndarray, control_share: float | np.ndarray) -> np.ndarray:
    """Control where the draw falls below the share (a share per subscriber, e.g. per channel, works too)."""
    return np.asarray(u) < control_share
