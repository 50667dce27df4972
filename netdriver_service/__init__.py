"""cnm's host agent: the only part of cnm that touches the kernel."""
