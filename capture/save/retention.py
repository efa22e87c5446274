"""KDUMP_KEEP_OLD_DUMPS: which of this host's own dumps may go.

Only directories that have our name form *and* our marker naming this host
count; anything else on the target (other names, SUSE's or another host's
dumps, plain files) is never touched.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional

from capture.save.dumpdir import README, parse_name, read_marker
from transports.base import Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OwnDump:
    name: str
    sort_key: tuple


def own_dumps(target: Transport, hostname: str, exclude: str = "") -> List[OwnDump]:
    """This host's dump directories on ``target``, oldest first."""
    found = []
    for entry in target.listdir(""):
        if not entry.is_dir or entry.name == exclude:
            continue
        parsed = parse_name(entry.name)
        if parsed is None:
            continue
        marker = read_marker(target, entry.name)
        if marker is None or marker["host"] != hostname:
            continue
        found.append(OwnDump(entry.name, parsed.sort_key))
    return sorted(found, key=lambda d: d.sort_key)


def surplus(old: List[OwnDump], keep: int) -> List[OwnDump]:
    """The old dumps beyond ``keep`` (0: none, -1: all), oldest first."""
    if keep == 0:
        return []
    if keep < 0:
        return list(old)
    return list(old[:-keep]) if len(old) > keep else []


def expendable_before_success(old: List[OwnDump], keep: int) -> List[OwnDump]:
    """Dumps that may be deleted to make room while the new one is written.

    Only those retention would delete after a success anyway, and never the
    newest old dump: if the new save fails, one good dump remains.
    """
    candidates = surplus(old, keep)
    if old and candidates and candidates[-1] == old[-1]:
        candidates = candidates[:-1]
    return candidates


def saved_size(target: Transport, dump: OwnDump) -> Optional[int]:
    """The bytes ``dump`` saved, as its README records them (None: not recorded)."""
    raw = target.read_small(f"{dump.name}/{README}")
    for line in (raw or b"").decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(": ")
        words = value.split()
        if key == "saved" and "bytes" in words[1:]:
            count = words[words.index("bytes") - 1]
            return int(count) if count.isdigit() and len(count) < 20 else None
    return None


def delete(target: Transport, dumps: List[OwnDump], why: str) -> List[str]:
    deleted = []
    for dump in dumps:
        log.info("deleting old dump %s (%s)", dump.name, why)
        target.remove_tree(dump.name)
        deleted.append(dump.name)
    return deleted
