"""Magic numbers that tell formats apart before any reader parses a file (no reader imports another's)."""

from __future__ import annotations

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # what torch.save (before 1.6) pickles first
TORCH_LEGACY_HEAD = 14  # \x80 <protocol> \x8a \x0a and the magic's 10 little-endian bytes


def is_torch_legacy(head: bytes) -> bool:
    """True when ``head`` (a file's first :data:`TORCH_LEGACY_HEAD` bytes) is the pickled legacy torch magic
    number: a pickle protocol 2+ LONG1 opcode of 10 bytes holding 0x1950a86a20f9469cfc6c."""
    return (len(head) >= TORCH_LEGACY_HEAD and head[0] == 0x80 and head[1] >= 2 and head[2:4] == b"\x8a\x0a"
            and head[4:TORCH_LEGACY_HEAD] == TORCH_LEGACY_MAGIC.to_bytes(10, "little"))
