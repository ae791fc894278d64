"""The machinery under a fit: processes and devices, threads, Ctrl-C, memory, checkpoint files."""
