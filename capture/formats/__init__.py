"""Readers and writers of kernel dump formats."""
