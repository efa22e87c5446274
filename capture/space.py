"""KDUMP_FREE_DISK_SIZE: the free space that must remain on the target.

:class:`SpaceGuard` is asked before every write how many new bytes it
brings; it keeps a budget from the last measurement and measures again
every ``recheck`` bytes, or when the budget runs out.  When the budget
cannot cover a write, it first lets the caller free room (old dumps that
retention may delete), then stops the save before crossing the limit.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

from capture.errors import KdumpError
from transports.base import Transport

log = logging.getLogger(__name__)


class SpaceLimitReached(KdumpError):
    """Writing more would leave less than KDUMP_FREE_DISK_SIZE free."""


class SpaceGuard:
    def __init__(self, target: Transport, limit_bytes: int,
                 make_room: Optional[Callable[[], bool]] = None, recheck: int = 32 << 20) -> None:
        self.target = target
        self.limit = limit_bytes
        self.make_room = make_room
        self.recheck = recheck
        self.known = True
        self._budget = 0
        self._since_check = 0
        self.free_at_start: Optional[int] = None

    def _measure(self) -> Optional[int]:
        free = self.target.free_space()
        if free is None:
            self.known = False
            return None
        self._budget = free - self.limit
        self._since_check = 0
        return free

    def start(self) -> None:
        """Check before writing anything; free room or refuse when already below the limit."""
        self.free_at_start = self._measure()
        if self.free_at_start is None:
            log.warning("free space on the target is unknown: KDUMP_FREE_DISK_SIZE cannot be enforced")
            return
        log.info("free space on the target: %d MB (KDUMP_FREE_DISK_SIZE keeps %d MB free)",
                 self.free_at_start >> 20, self.limit >> 20)
        self.claim(0)

    def claim(self, nbytes: int) -> None:
        """Account for ``nbytes`` more on the target, or raise :class:`SpaceLimitReached`."""
        if not self.known:
            return
        self._since_check += nbytes
        if self._budget - nbytes < 0 or self._since_check >= self.recheck:
            self._measure()
            while self._budget - nbytes < 0:
                if not (self.make_room and self.make_room()):
                    raise SpaceLimitReached(
                        f"the target has {max(self._budget + self.limit, 0) >> 20} MB free and "
                        f"KDUMP_FREE_DISK_SIZE requires {self.limit >> 20} MB to stay free")
                self._measure()
        self._budget -= nbytes

    def describe(self) -> str:
        if not self.known:
            return "unknown (the target cannot tell; KDUMP_FREE_DISK_SIZE not enforced)"
        free = self.target.free_space()
        return "" if free is None else f"{free >> 20} MB free after saving (limit {self.limit >> 20} MB)"
