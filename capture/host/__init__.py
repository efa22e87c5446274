"""Production side: runs on the installed system, never in the capture kernel."""
