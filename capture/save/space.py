"""KDUMP_FREE_DISK_SIZE: the free space that must remain on the target.

:class:`SpaceGuard` is asked before every write how many new bytes it
brings; it keeps a budget from the last measurement and measures again
every ``recheck`` bytes, or when the budget runs out.  When the budget
cannot cover a write, it stops the save before crossing the limit.  Room is
made before the save starts (:func:`capture.save.sequence.make_room`), never
while a dump is being written.
"""
from __future__ import annotations

import logging
from typing import Optional

from capture.errors import KdumpError
from transports.base import Transport

log = logging.getLogger(__name__)


class SpaceLimitReached(KdumpError):
    """Writing more would leave less than KDUMP_FREE_DISK_SIZE free."""


#: kept free beyond KDUMP_FREE_DISK_SIZE, so that the README can still say why a save stopped
RESERVE = 1 << 20


def amount(nbytes: int) -> str:
    """``nbytes`` in MB, or in bytes when MB would round to 0."""
    return f"{nbytes >> 20} MB" if nbytes >= 1 << 20 else f"{max(nbytes, 0)} bytes"


class SpaceGuard:
    def __init__(self, target: Transport, limit_bytes: int, recheck: int = 32 << 20) -> None:
        self.target = target
        self.limit = limit_bytes
        self.recheck = recheck
        self.known = True
        self._budget = 0
        self._since_check = 0
        self.free_at_start: Optional[int] = None
        self._last_free: Optional[int] = None
        """What :meth:`room` measured last."""

    def _measure(self, free: Optional[int] = None) -> Optional[int]:
        if free is None:
            free = self.target.free_space()
        if free is None:
            self.known = False
            return None
        self._budget = free - self.limit - RESERVE
        self._since_check = 0
        return free

    def room(self) -> Optional[int]:
        """Bytes that may still be written now before the limit (negative: already below), None: unknown."""
        free = self._last_free = self.target.free_space()
        return None if free is None else free - self.limit - RESERVE

    def remeasure(self) -> None:
        """Forget the claims so far and measure again (a partial file was replaced)."""
        if self.known:
            self._measure()

    def start(self, reuse_room: bool = False) -> None:
        """Check before writing anything; free room or refuse when already below the limit.
        ``reuse_room``: nothing was written or deleted since :meth:`room` measured (each
        measurement is a command over ssh://): take its figure."""
        self.free_at_start = self._measure(self._last_free if reuse_room else None)
        if self.free_at_start is None:
            log.warning("free space on the target is unknown: KDUMP_FREE_DISK_SIZE cannot be enforced")
            return
        log.info("free space on the target: %s (KDUMP_FREE_DISK_SIZE keeps %s free)",
                 amount(self.free_at_start), amount(self.limit))
        self.claim(0)

    def claim(self, nbytes: int) -> None:
        """Account for ``nbytes`` more on the target, or raise :class:`SpaceLimitReached`."""
        if not self.known:
            return
        self._since_check += nbytes
        if self._budget - nbytes < 0 or self._since_check >= self.recheck:
            self._measure()
            if self._budget - nbytes < 0:
                free = max(self._budget + self.limit + RESERVE, 0)
                if self.limit:
                    raise SpaceLimitReached(
                        f"the target has {amount(free)} free and "
                        f"KDUMP_FREE_DISK_SIZE requires {amount(self.limit)} to stay free")
                raise SpaceLimitReached(
                    f"the target is full: {amount(free)} free, less than the {amount(nbytes + RESERVE)} "
                    "the next write and the README need")
        self._budget -= nbytes

    def describe(self) -> str:
        if not self.known:
            return "unknown (the target cannot tell; KDUMP_FREE_DISK_SIZE not enforced)"
        free = self.target.free_space()
        return "" if free is None else f"{amount(free)} free after saving (limit {amount(self.limit)})"
