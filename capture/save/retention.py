"""KDUMP_KEEP_OLD_DUMPS and making room: which of this host's own dumps may go, and how.

Only directories that have our name form *and* our marker naming this host
count; anything else on the target (other names, SUSE's or another host's
dumps, plain files) is never touched.  Within such a directory only the
files the marker records as the saver's are deleted; a directory that
holds anything else is left in place with its foreign files, and the
message says so.

A dump another saver is still writing (its marker says ``writing`` and was
created less than :data:`LEASE_SECONDS` ago) is never deleted; after that
the save is taken for abandoned and counts as an incomplete old dump.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import List, Optional, Tuple

from capture.save.dumpdir import (COMPLETE, MARKER, README, WRITING, own_files, parse_name, read_marker)
from transports.base import Transport, TransportError

log = logging.getLogger(__name__)

LEASE_SECONDS = 24 * 3600
"""How long a save marked ``writing`` is protected: longer than any save
takes, so that only a save whose capture kernel died is ever taken for abandoned."""


@dataclass(frozen=True)
class OwnDump:
    """One of this host's dump directories."""

    name: str
    sort_key: tuple
    complete: bool
    """Its README says the dump was saved successfully."""
    being_written: bool
    """Another save is (or may still be) writing it: never deleted."""
    files: Tuple[str, ...]
    """The names the saver may have written there: the only ones deleted."""
    saved_bytes: Optional[int] = None
    """What its README says was saved, when it says."""


def own_dumps(target: Transport, hostname: str, older_than: Optional[tuple] = None,
              now: Optional[datetime] = None) -> List[OwnDump]:
    """This host's dump directories on ``target``, oldest first; with
    ``older_than`` (a name's sort key) only those that sort before it, so
    that a save never deletes its own directory or a dump newer than itself."""
    now = now or datetime.now(timezone.utc)
    found = []
    for entry in target.listdir(""):
        if not entry.is_dir:
            continue
        parsed = parse_name(entry.name)
        if parsed is None or older_than is not None and parsed.sort_key >= older_than:
            continue
        marker = read_marker(target, entry.name)
        if marker is None or marker["host"] != hostname:
            continue
        status, saved = _readme_status(target, entry.name)
        complete = status == "saved successfully" and marker.get("state", COMPLETE) != WRITING
        writing = not complete and (marker.get("state") == WRITING or status == "being written") \
            and _age_seconds(marker.get("created"), now) < LEASE_SECONDS
        recorded = marker.get("files")
        files = tuple(f for f in recorded if isinstance(f, str) and "/" not in f) \
            if isinstance(recorded, list) else own_files()
        found.append(OwnDump(entry.name, parsed.sort_key, complete, writing, files, saved))
    return sorted(found, key=lambda d: d.sort_key)


def _readme_status(target: Transport, name: str) -> Tuple[str, Optional[int]]:
    """The README's ``vmcore status`` and ``saved`` bytes (empty, None when absent)."""
    raw = target.read_small(f"{name}/{README}") or b""
    status, saved = "", None
    for line in raw.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(": ")
        if key == "vmcore status" and not status:
            status = value.strip()
        elif key == "saved" and "bytes" in value.split()[1:]:
            words = value.split()
            count = words[words.index("bytes") - 1]
            saved = int(count) if count.isdigit() and len(count) < 20 else None
    return status, saved


def _age_seconds(created: object, now: datetime) -> float:
    """Seconds since the marker's ``created``; 0 (fresh) when it cannot be read or lies ahead."""
    try:
        when = datetime.fromisoformat(str(created))
    except ValueError:
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (now - when).total_seconds())


def surplus(old: List[OwnDump], keep: int) -> List[OwnDump]:
    """The old dumps beyond ``keep`` (0: none, -1: all), oldest first; never one being written."""
    settled = [d for d in old if not d.being_written]
    if keep == 0:
        return []
    if keep < 0:
        return settled
    return settled[:-keep] if len(settled) > keep else []


def expendable_before_success(old: List[OwnDump], keep: int) -> List[OwnDump]:
    """Dumps that may be deleted to make room before the new one is written:
    only those retention would delete after a success anyway, and never the
    newest complete dump, so that one good dump remains if the new save fails."""
    complete = [d for d in old if d.complete and not d.being_written]
    protected = complete[-1] if complete else None
    return [d for d in surplus(old, keep) if d is not protected]


def delete(target: Transport, dumps: List[OwnDump], why: str) -> Tuple[List[str], List[str]]:
    """Delete the saver's files of each dump, then the directory if that
    left it empty.  Returns (deleted directories, problems); a failure is
    logged and reported, never raised: the other dumps are still handled."""
    deleted: List[str] = []
    problems: List[str] = []
    for dump in dumps:
        log.info("deleting old dump %s (%s)", dump.name, why)
        try:
            foreign = _delete_own_files(target, dump)
        except TransportError as exc:
            if _gone(target, dump):
                log.info("old dump %s: deleted meanwhile by another saver", dump.name)
                continue
            problems.append(f"old dump {dump.name} could not be deleted: {exc}")
            log.error("%s", problems[-1])
            continue
        if foreign:
            problems.append(f"old dump {dump.name}: its files are deleted, the directory is kept because it "
                            f"holds files kdump-saver did not write: {', '.join(foreign)}")
            log.warning("%s", problems[-1])
        deleted.append(dump.name)
    return deleted, problems


def _gone(target: Transport, dump: OwnDump) -> bool:
    """Whether ``dump`` is no longer ours: its marker is gone (another saver's retention took it)."""
    try:
        return read_marker(target, dump.name) is None
    except TransportError:
        return not any(e.name == dump.name for e in target.listdir(""))


def _delete_own_files(target: Transport, dump: OwnDump) -> List[str]:
    """Delete the recorded files (the marker last, so a failure leaves the
    directory ours and retried next time); return the names left behind."""
    entries = target.listdir(dump.name)
    # the dump itself first and the README last: a failure leaves a dump whole or only its small files
    ours = sorted((e.name for e in entries if not e.is_dir and e.name in dump.files and e.name != MARKER),
                  key=lambda n: (not n.startswith("vmcore"), n.startswith(README), n))
    foreign = sorted(e.name for e in entries if e.name not in ours and e.name != MARKER)
    for name in ours:
        target.remove(f"{dump.name}/{name}")
    target.remove(f"{dump.name}/{MARKER}")
    if not foreign:
        target.rmdir(dump.name)
    return foreign
