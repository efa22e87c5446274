"""Production side: runs on the installed system, never in the capture kernel.

Building the capture initrd (:mod:`.initrd`, its Python closure
:mod:`.closure`), loading it (:mod:`.kexec`), describing the running network
for the capture kernel (:mod:`.netdetect`), the target kernel's drivers of
the devices it needs (:mod:`.drivers`), the storage stack under a local
target (:mod:`.storage`) and sizing ``crashkernel=``
(:mod:`.crashkernel`).  Nothing outside this package and
:mod:`capture.commands` imports it, and the initrd never carries it."""
