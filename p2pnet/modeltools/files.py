"""The files a model tool reads and writes: checked paths, and output written next to
its destination first, so that a failed conversion leaves no partial file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from p2pnet.errors import ModelFileError, UsageError

__all__ = ["check_paths", "write_atomic"]


def write_atomic(data: bytes, out: Path) -> Path:
    """A temporary file next to ``out`` holding ``data``; the caller renames or deletes it."""
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def check_paths(source: Path, out: Path, *, directory: bool = False) -> None:
    """Check that ``source`` can be read and ``out`` written, and that they differ.
    ``directory``: ``source`` may be a directory too (a TensorFlow SavedModel).

    Raises:
        ModelFileError: ``source`` is missing, or a directory where a file is wanted.
        UsageError: ``out``'s directory is missing, or ``out`` is ``source``.
    """
    if not source.is_file() and not (directory and source.is_dir()):
        what = "is a directory" if source.is_dir() else "does not exist"
        raise ModelFileError(f"cannot read {source}: it {what}")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: directory {out.parent} does not exist")
    if out.exists() and out.resolve() == source.resolve():
        raise UsageError(f"{out} is the source file; give another output path")
