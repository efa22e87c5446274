"""Readers and writers of kernel dump formats: ELF cores (:mod:`.elfcore`),
kdump-compressed files (:mod:`.kdumpfile`), makedumpfile's flattened stream
(:mod:`.flattened`), and :mod:`.dumpinfo`, which tells them apart; the
crashed kernel's memory by address (:mod:`.kmem`), its pages classified by
dump level (:mod:`.pageclass`; the bits and when makedumpfile can be trusted
with them: :mod:`.dumplevel`), and the kdump-compressed writer
(:mod:`.kdumpwriter`).  Used on both sides; never imports the save, the
network or the host side."""

#: the suffix of a dump file still being written; every writer of dump files
#: uses it until the file is complete, and readers report such a file as incomplete
INCOMPLETE = ".incomplete"
