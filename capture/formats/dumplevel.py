"""makedumpfile's dump level (``-d``) bits, and whether a given makedumpfile
filters a given kernel correctly.

Kept apart from :mod:`capture.formats.pageclass` so that the save can decide
on its collector without importing the page classifier (start-up time in the
capture kernel: the collector is started before the classifier is needed).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple, Union

ZERO = 1
CACHE = 2
CACHE_PRIVATE = 4
USER = 8
FREE = 16

#: makedumpfile fixed the slab mix-up of Linux 6.10+ in this version
SLAB_PAGE_TYPE_FIXED = (1, 7, 6)
#: makedumpfile reads OFFSET(page.compound_info) (Linux 7.1+) from this version on
COMPOUND_INFO_FIXED = (1, 8, 0)


def makedumpfile_misfilters(vmcoreinfo: Mapping[str, str], makedumpfile_version: Union[str, Sequence[int]],
                            dump_level: int) -> Optional[str]:
    """Why makedumpfile ``makedumpfile_version`` would leave out pages that are needed at
    ``dump_level`` on the kernel this VMCOREINFO describes; None when it can be trusted.

    Known cases: since Linux 6.10 slab pages carry a page type instead of
    PG_slab and share the anonymous-page bit's word with slab bookkeeping, so
    makedumpfile before 1.7.6 drops live slab pages as user data (bit 8);
    a kernel that marks slab pages neither way cannot be filtered for user
    data by anyone; since Linux 7.1 the tail-page link is exported as
    ``page.compound_info``, unknown to makedumpfile before 1.8.0, which then
    takes tail pages of kept compound pages for separate pages.
    """
    version = _version_tuple(makedumpfile_version)
    has_pg_slab = "NUMBER(PG_slab)" in vmcoreinfo
    slab_type = "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)" in vmcoreinfo
    release = vmcoreinfo.get("OSRELEASE", "this kernel")
    shown = ".".join(map(str, version))
    if dump_level & USER and not has_pg_slab and slab_type and version < SLAB_PAGE_TYPE_FIXED:
        return (f"makedumpfile {shown} cannot tell slab pages of Linux {release} (marked by page type, "
                f"no NUMBER(PG_slab) in VMCOREINFO) from user data: dump level {dump_level} "
                f"(bit 8) would drop live slab pages; fixed in makedumpfile 1.7.6")
    if dump_level & USER and not has_pg_slab and not slab_type:
        return (f"VMCOREINFO of Linux {release} marks slab pages neither by NUMBER(PG_slab) nor by "
                f"NUMBER(PAGE_SLAB_MAPCOUNT_VALUE): dump level {dump_level} (bit 8) cannot be applied safely")
    if (dump_level & (CACHE | CACHE_PRIVATE | USER | FREE) and "OFFSET(page.compound_info)" in vmcoreinfo
            and "OFFSET(page.compound_head)" not in vmcoreinfo and version < COMPOUND_INFO_FIXED):
        return (f"makedumpfile {shown} does not know OFFSET(page.compound_info) of Linux {release}: it cannot "
                f"recognise tail pages and would drop needed ones at dump level {dump_level}; fixed in 1.8.0")
    return None


def _version_tuple(version: Union[str, Sequence[int]]) -> Tuple[int, ...]:
    if isinstance(version, str):
        parts = []
        for piece in version.strip().split("."):
            digits = "".join(ch for ch in piece if ch.isdigit())
            if not digits:
                break
            parts.append(int(digits))
        return tuple(parts) or (0,)
    return tuple(int(x) for x in version)
