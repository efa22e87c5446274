"""Dump file formats: reading ELF cores and kdump-compressed files, writing kdump-compressed streams."""
