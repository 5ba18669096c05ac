"""File-system helpers for making writes durable."""

from __future__ import annotations

import os


def fsync_path(path: str) -> None:
    """fsync a file or directory by path (a directory fsync makes renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
