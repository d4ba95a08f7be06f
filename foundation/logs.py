"""Logging set-up shared by every entry point: timestamped lines on stderr."""

import logging
import sys

_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO, rank: int | None = None) -> None:
    """Send log records to stderr with timestamps; tag lines with the rank in multi-process runs."""
    fmt = _FORMAT if rank is None else f"%(asctime)s %(levelname).1s [rank{rank}] %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
