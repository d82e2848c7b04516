"""How the ingest opens a media file: never through a symlink, and with the container
format fixed by the file's extension.

Left to guess, FFmpeg picks a demuxer from the file's bytes, and some demuxers read other
files: a 50-byte `ffconcat` script named `clip.mp4` makes the concat demuxer decode
whatever video it names (a symlink in the folder, say), an HLS playlist does the same
through the hls demuxer, and image2 reads file patterns. Fixed to the demuxer its
extension names, such a file fails to open and is quarantined (`unreadable_container`).
Files reach FFmpeg as open Python file objects, never as names, so no name is read as a
protocol URL (`concat:a.mp4|b.mp4`, `subfile:`) and a non-UTF-8 name cannot crash PyAV.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from spark_trainer.params import AV_FORMATS, IMAGE_FORMATS  # the allowlists (params validate against them)

_AV_OPTIONS = {"mp4": {"enable_drefs": "0"}, "mov": {"enable_drefs": "0"}}


class UnsupportedContainer(Exception):
    """The file's extension names no allowed container format."""


def _allowed(path: Path, formats: dict[str, str], kind: str) -> str:
    try:
        return formats[path.suffix.lower()]
    except KeyError:
        raise UnsupportedContainer(f"extension '{path.suffix}' has no allowed {kind} format "
                                   f"(allowed: {', '.join(formats)})") from None


def av_format(path: Path) -> str:
    return _allowed(path, AV_FORMATS, "container")


def image_format(path: Path) -> str:
    return _allowed(path, IMAGE_FORMATS, "image")


def open_file(path: Path) -> BinaryIO:
    """The file for reading; OSError when `path` is a symlink (O_NOFOLLOW: the link is
    never followed, even one swapped in after the folder was listed) or not a regular file
    (O_NONBLOCK: a FIFO does not hang the open)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"not a regular file: {os.fsencode(path.name)!r}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def open_container(path: Path) -> Iterator:
    """A PyAV input container opened as the format its extension names. Raises
    UnsupportedContainer, or PyAV's errors when the bytes are not that format."""
    import av

    fmt = av_format(path)
    with open_file(path) as f, av.open(f, format=fmt, options=_AV_OPTIONS.get(fmt, {})) as container:
        yield container
