"""The newest dump of this host on the target, for ``kdump-saver status``.

The target is asked once (no retries) and the whole look-up gets
``timeout`` seconds: a target that does not answer by then is reported as
not reachable, and status does not wait for it (the look-up runs in a
daemon thread that is left behind).
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, replace
from typing import Optional, Union

from capture.config.options import Config
from capture.config.targeturl import parse_list
from capture.errors import KdumpError
from capture.host.notify import local_hostname, readme_rows
from capture.save import retention
from capture.save.dumpdir import README

log = logging.getLogger(__name__)

TIMEOUT = 5.0


@dataclass(frozen=True)
class LastDump:
    directory: str          # on the target
    status: str             # README's "vmcore status" (saved successfully, INCOMPLETE: why, ...)
    crash_time: str


@dataclass(frozen=True)
class Lookup:
    """What status prints: the dump, or why there is none to show."""

    target: str                         # the target URL, password masked
    dump: Optional[LastDump] = None
    problem: str = ""                   # "" when the target answered

    def describe(self) -> str:
        if self.problem:
            return f"{self.target}: {self.problem}"
        if self.dump is None:
            return f"none of this host on {self.target}"
        d = self.dump
        return f"{self.target}/{d.directory}: {d.status} (crash time {d.crash_time})"


def last_dump(config: Config, timeout: float = TIMEOUT) -> Lookup:
    """The newest dump of this host (KDUMP_HOSTNAME, else the short host
    name) on KDUMP_SAVEDIR, looked up within ``timeout`` seconds."""
    try:
        url = parse_list(config.savedir)[0]  # the first target, where dumps normally go
    except KdumpError as exc:
        return Lookup(config.savedir, problem=str(exc))
    shown = url.masked()
    if url.scheme == "file" and not os.path.isdir(url.path):
        return Lookup(shown)   # nothing saved yet; opening it would create it
    box: dict = {}

    def look() -> None:
        try:
            box["result"] = _newest(replace(config, net_timeout=0), local_hostname(config))
        except (KdumpError, OSError) as exc:
            box["result"] = exc

    worker = threading.Thread(target=look, name="kdump-saver-last-dump", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return Lookup(shown, problem=f"no answer within {timeout:g} s")
    result: Union[Optional[LastDump], BaseException] = box.get("result")
    if isinstance(result, BaseException):
        return Lookup(shown, problem=f"not reachable ({result})")
    return Lookup(shown, dump=result)


def _newest(config: Config, hostname: str) -> Optional[LastDump]:
    from transports import open_target
    from transports.base import TransportOptions

    url = parse_list(config.savedir)[0]
    with open_target(url, TransportOptions.from_config(config)) as target:
        dumps = retention.own_dumps(target, hostname)
        if not dumps:
            return None
        newest = dumps[-1].name
        raw = target.read_small(f"{newest}/{README}")
    rows = readme_rows(raw.decode("utf-8", "replace")) if raw is not None else {}
    return LastDump(directory=newest, status=rows.get("vmcore status", f"no {README}"),
                    crash_time=rows.get("crash time", "unknown"))
