"""Data set archives on the client's side: a folder of `<label>/<image>` packed into a zip the
way `POST /v1/datasets` takes it, or an archive file sent as it is.

The zip is deterministic (sorted members, one fixed timestamp and mode), so packing the same
folder twice gives the same bytes, and the server's content address gives the same data set id.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

# Already compressed: deflating them again costs CPU and saves nothing.
STORED_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
# An archive file is sent as it is, with this media type (the server reads the bytes, not the name).
ARCHIVE_TYPES: dict[str, str] = {
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".tar.gz": "application/gzip",
    ".tgz": "application/gzip",
}
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold
FILE_MODE = 0o644 << 16  # a regular file, rw-r--r--, in the zip's external attributes

PackProgress = Callable[[int, int], None]
"""Called with (members packed, members in all) as a folder is packed."""


class ArchiveError(ValueError):
    """A path that cannot be sent as a data set: not a folder, not an archive, or nothing in it."""


@dataclass(frozen=True)
class Archive:
    """An archive ready to send: its file (open, seekable), name, media type and size."""

    file: IO[bytes]
    name: str
    media_type: str
    size: int


def archive_type(path: Path) -> str | None:
    """The media type of an archive file by its name (zip, tar, tar.gz, tgz); None for anything else."""
    name = path.name.lower()
    for suffix, media_type in ARCHIVE_TYPES.items():
        if name.endswith(suffix):
            return media_type
    return None


def folder_members(folder: Path) -> list[tuple[Path, str]]:
    """Every file under `folder` with its name in the archive (`<label>/<image>`, `/`-separated),
    sorted; hidden files and folders (`.DS_Store`, `.git`) and links to folders are left out."""
    members: list[tuple[Path, str]] = []
    # os.walk does not follow links to folders: a link loop cannot make the walk endless.
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(root) / name
            if name.startswith(".") or not path.is_file():
                continue
            members.append((path, PurePosixPath(*path.relative_to(folder).parts).as_posix()))
    return sorted(members, key=lambda member: member[1])


def pack_folder(folder: Path, out: IO[bytes], progress: PackProgress | None = None) -> int:
    """Write `folder`'s files to `out` as a deterministic zip; the number of members."""
    members = folder_members(folder)
    if not members:
        raise ArchiveError(f"{folder} holds no files: a data set is a folder of <label>/<image> files")
    with zipfile.ZipFile(out, "w") as archive:
        for done, (path, name) in enumerate(members, start=1):
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.external_attr = FILE_MODE
            stored = Path(name).suffix.lower() in STORED_SUFFIXES
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            with path.open("rb") as source, archive.open(info, "w") as target:
                while chunk := source.read(1 << 20):
                    target.write(chunk)
            if progress is not None:
                progress(done, len(members))
    return len(members)


@contextmanager
def open_archive(path: str | os.PathLike[str], progress: PackProgress | None = None) -> Iterator[Archive]:
    """`path` as an archive to send: a folder packed into a temporary zip (removed afterwards),
    or an archive file opened as it is."""
    source = Path(path)
    if source.is_dir():
        with tempfile.TemporaryFile(prefix="maas-dataset-", suffix=".zip") as packed:
            pack_folder(source, packed, progress)
            size = packed.tell()
            packed.seek(0)
            yield Archive(packed, f"{source.resolve().name or 'dataset'}.zip", ARCHIVE_TYPES[".zip"], size)
        return
    media_type = archive_type(source)
    if not source.is_file() or media_type is None:
        raise ArchiveError(f"{source} is neither a folder nor a .zip, .tar, .tar.gz or .tgz archive")
    with source.open("rb") as opened:
        yield Archive(opened, source.name, media_type, source.stat().st_size)
