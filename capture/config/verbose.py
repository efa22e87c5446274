"""KDUMP_VERBOSE, a bitmask, with the meaning SUSE's template and kdump(5) give each bit.

* 1 (:data:`LOAD_LOG`): the kexec command line goes to the system log when
  the capture kernel is loaded;
* 2 (:data:`PROGRESS`): progress is written to standard output while the
  dump is saved (once a second, besides the calm progress of the log);
* 4 (:data:`LOAD_STDOUT`): the kexec command line is written to standard
  output when loading;
* 8 (:data:`SAVE_DEBUG`): debugging while saving: our own debug messages
  (ssh failures in full), makedumpfile's debug message level, and shell tracing
  (``set -x``) of the capture initrd's scripts;
* 16 (:data:`LOAD_DEBUG`): debugging when loading and detecting the capture
  kernel: debug messages of ``load`` and ``build-initrd``, and ``kexec -d``.
"""
from __future__ import annotations

import logging

LOAD_LOG = 1
PROGRESS = 2
LOAD_STDOUT = 4
SAVE_DEBUG = 8
LOAD_DEBUG = 16
ALL = LOAD_LOG | PROGRESS | LOAD_STDOUT | SAVE_DEBUG | LOAD_DEBUG

#: makedumpfile --message-level bits: progress indicator, common, error, debug
MDF_PROGRESS, MDF_COMMON, MDF_ERROR, MDF_DEBUG = 1, 2, 4, 8


def makedumpfile_message_level(verbose: int) -> int:
    """Progress, common and error messages always (the saver reads the progress and the
    errors); debug messages too with :data:`SAVE_DEBUG`."""
    level = MDF_PROGRESS | MDF_COMMON | MDF_ERROR
    return level | MDF_DEBUG if verbose & SAVE_DEBUG else level


def debug_logging(verbose: int, saving: bool) -> None:
    """Switch our logging to debug when KDUMP_VERBOSE asks for it: :data:`SAVE_DEBUG` for the
    save (``saving``), :data:`LOAD_DEBUG` for loading and building.  Never lowers the level."""
    if not verbose & (SAVE_DEBUG if saving else LOAD_DEBUG):
        return
    logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger(__name__).debug("KDUMP_VERBOSE=%d: debug messages on", verbose)
