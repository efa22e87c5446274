"""kdump-saver: saves a crashed kernel's memory from a kdump capture kernel."""

__version__ = "0.1.0"
