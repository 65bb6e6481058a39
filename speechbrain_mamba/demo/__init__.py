"""Runnable demonstrations of speechbrain-mamba."""
