"""Runnable demonstrations, played by `make demo`."""
