"""Saving a dump: collecting pages from the vmcore and writing them to a target."""
