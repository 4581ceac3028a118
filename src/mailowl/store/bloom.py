"""A Bloom filter over sample identities, so a never-seen sample costs no database query.

Identities are SHA-256 hex digests, already uniformly distributed: the bit positions are slices of them.
"""

from __future__ import annotations

_BITS_LOG2 = 26  # 64 Mbit = 8 MiB; about 1 % false positives at 7 million identities
_HASHES = 6


class IdentityBloom:
    def __init__(self) -> None:
        self.bits = bytearray(1 << (_BITS_LOG2 - 3))
        self.mask = (1 << _BITS_LOG2) - 1

    def _positions(self, identity: str) -> list[int]:
        value = int(identity[: _HASHES * 8], 16) if len(identity) >= _HASHES * 8 else hash(identity)
        return [(value >> (32 * i)) & self.mask for i in range(_HASHES)]

    def add(self, identity: str) -> None:
        bits = self.bits
        for pos in self._positions(identity):
            bits[pos >> 3] |= 1 << (pos & 7)

    def __contains__(self, identity: str) -> bool:
        bits = self.bits
        return all(bits[pos >> 3] & (1 << (pos & 7)) for pos in self._positions(identity))
