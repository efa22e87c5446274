"""kdump-saver: saves a crashed kernel's memory from a kdump capture kernel.

Where the code runs decides where it lives:

- :mod:`capture.config`: the configuration (``/etc/sysconfig/kdump``) and
  target URLs.  Both sides.
- :mod:`capture.formats`: readers and writers of dump formats (ELF core,
  kdump-compressed, flattened, lz4).  Both sides.
- :mod:`capture.save`: the save and what it needs (makedumpfile, the dump
  directory, retention, free space, progress) and the capture-kernel boot
  sequence.  Capture kernel (and ``kdump-saver save`` on any machine).
- :mod:`capture.net`: the capture kernel's network plan and its bring-up.
  Capture kernel.
- :mod:`capture.host`: the production system: building the capture initrd,
  loading it with kexec, detecting the network, sizing ``crashkernel=``.
  Never imported in the capture kernel, never carried into its initrd.
- :mod:`capture.commands`: the ``kdump-saver`` subcommands (:mod:`capture.cli`).
- :mod:`capture.codecache`: dataclass code compiled at initrd build time.
  Both sides.

Target transports are in the top-level package :mod:`transports`.
"""

import os as _os

from capture import codecache as _codecache

__version__ = "0.1.0"

# before any dataclass of ours is made (every entry point imports this package first):
# in the capture kernel, the launcher names the dataclass code compiled at build time
_codecache.use(_os.environ.get(_codecache.ENVIRONMENT))
