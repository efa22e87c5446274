"""The save, run in the capture kernel (or by ``kdump-saver save``): the sequence
(:mod:`.sequence`), makedumpfile (:mod:`.collector`) or our own collector
(:mod:`.pycollector`), the dump directory (:mod:`.dumpdir`), writing the
stream (:mod:`.dumpwriter`), free space (:mod:`.space`), old dumps
(:mod:`.retention`), progress (:mod:`.progress`), and the capture kernel's
whole boot sequence around it (:mod:`.boot`)."""
