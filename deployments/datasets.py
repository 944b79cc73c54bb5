"""Data sets: an uploaded archive of `<label>/<image>` folders, read under limits, every image
through the hardened decoder, stored in the model store under the archive's hash. No HTTP.

What an archive may be (each refusal is an API error, and nothing is left in the store):
- a zip, a tar or a gzip-compressed tar, told by its first bytes (never by a name): else 415;
- malformed, or holding what may never be extracted (absolute or `..` names, backslashes,
  links, devices, fifos, duplicate or encrypted members): 400 `invalid_archive`;
- over a limit of DatasetLimits (members, expanded bytes, a member's compression ratio): 413;
- readable but no data set (too few classes, a class with too few kept images, a bad label):
  422 `invalid_dataset`; longer than `max_seconds` to read: 408.

Members are read once, in order, and never extracted by name: an image is decoded by
models.images (its format allow-list and pixel limits) and its pixels stored as a new PNG under
a number of ours; a file that does not decode is listed in `rejected`, the rest kept. The
expanded size is counted from the bytes the decompressor really gives (for a tar, the whole tar
stream, headers included), not from the sizes the headers declare.

Everything is written into a fresh directory beside the data sets and renamed into place once
every check has passed: a data set is there whole or not at all.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import time
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Protocol

from contract.lifecycle import Dataset, RejectedFile
from deployments.args import DatasetLimits
from deployments.errors import (
    InvalidArchive,
    InvalidDataset,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    UnsupportedMediaType,
)
from deployments.store import Store, write_json
from models.images import DecodeTimeout, ImageError, ImageLimits, decode_image
from models.training.datasets import DATASET_FILE, IMAGES_DIR, image_path, read_dataset

ArchiveKind = Literal["zip", "tar", "tar.gz"]

MAX_LABEL_CHARS = 64
# A member must expand to this much before its ratio counts: a small file of zeros is no bomb.
RATIO_MIN_BYTES = 1024 * 1024
# What operating systems add to a folder they archive: skipped without a word.
JUNK_FOLDERS = frozenset({"__MACOSX"})
JUNK_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_CHUNK = 64 * 1024
_INCOMING = ".incoming-"
_LEAVING = ".deleting-"
# What zipfile, tarfile, gzip and zlib raise on damaged input.
_ARCHIVE_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    tarfile.TarError,
    gzip.BadGzipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
)


def sniff_archive(head: bytes) -> ArchiveKind | None:
    """The archive kind its first bytes name (at least 262 of them for a tar), or None."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head[257:262] == b"ustar":
        return "tar"
    return None


def dataset_id(upload: IO[bytes]) -> str:
    """A data set's id: the first 16 hex digits of its archive's sha256 (the file is rewound)."""
    upload.seek(0)
    digest = hashlib.sha256()
    while chunk := upload.read(1024 * 1024):
        digest.update(chunk)
    upload.seek(0)
    return digest.hexdigest()[:16]


# ---- the store -------------------------------------------------------------------------


def get_dataset(store: Store, dataset_id: str) -> Dataset:
    """The stored data set (404 when there is none; `dataset_id` is checked by the route's pattern)."""
    try:
        return read_dataset(store.dataset(dataset_id))
    except FileNotFoundError:
        raise NotFound(f"no data set {dataset_id!r}; see GET /v1/datasets") from None


def list_datasets(store: Store) -> list[Dataset]:
    """Every stored data set, oldest first (directories being written or deleted are not listed)."""
    found = []
    if store.datasets.is_dir():
        for directory in store.datasets.iterdir():
            if directory.name.startswith("."):
                continue
            try:
                found.append(read_dataset(directory))
            except (FileNotFoundError, ValueError):
                continue  # deleted while listed, or not a data set
    return sorted(found, key=lambda d: (d.created, d.id))


def delete_dataset(store: Store, dataset_id: str) -> None:
    """Remove a data set: renamed out of sight at once, then deleted (404 when there is none)."""
    directory = store.dataset(dataset_id)
    leaving = store.datasets / f"{_LEAVING}{dataset_id}-{os.urandom(4).hex()}"
    try:
        directory.rename(leaving)
    except FileNotFoundError:
        raise NotFound(f"no data set {dataset_id!r}; see GET /v1/datasets") from None
    shutil.rmtree(leaving, ignore_errors=True)


def ingest(store: Store, upload: IO[bytes], limits: DatasetLimits, image_limits: ImageLimits) -> tuple[Dataset, bool]:
    """Store the archive in `upload` (a seekable binary file) as a data set: (the data set, True)
    when stored now, (the stored one, False) when the same archive was stored before. Raises an
    API error, writing nothing, when the archive is refused."""
    deadline = time.monotonic() + limits.max_seconds
    identity = dataset_id(upload)
    try:
        return read_dataset(store.dataset(identity)), False
    except FileNotFoundError:
        pass
    kind = sniff_archive(upload.read(512))
    upload.seek(0)
    if kind is None:
        raise UnsupportedMediaType("the archive is not a zip, a tar or a tar.gz (told by its content, not its name)")
    store.datasets.mkdir(parents=True, exist_ok=True)
    _sweep(store, older_than=time.time() - 2 * limits.max_seconds)
    staging = Path(tempfile.mkdtemp(prefix=_INCOMING, dir=store.datasets))
    try:
        reader = _Reader(staging, limits, image_limits, deadline)
        try:
            if kind == "zip":
                _read_zip(upload, reader)
            else:
                _read_tar(upload, reader, gzipped=kind == "tar.gz")
        except _ARCHIVE_ERRORS as exc:
            raise InvalidArchive(f"the {kind} archive is damaged or truncated ({type(exc).__name__})") from None
        dataset = reader.finish(identity)
        try:
            staging.rename(store.dataset(identity))
        except OSError:
            # The same archive, stored meanwhile by another upload: that one stands.
            return get_dataset(store, identity), False
        return dataset, True
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sweep(store: Store, older_than: float) -> None:
    """Remove what an upload or a deletion cut short (a process killed mid-way) left behind: past
    twice the time an archive may take, no upload still writes there."""
    for leftover in store.datasets.iterdir():
        if leftover.name.startswith((_INCOMING, _LEAVING)):
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < older_than:
                    shutil.rmtree(leftover, ignore_errors=True)


# ---- reading members -------------------------------------------------------------------


@dataclass
class _File:
    """A regular member: its name in the archive, its path parts, and what became of it."""

    name: str
    parts: tuple[str, ...]
    pending: Path | None = None  # its pixels as PNG, until placed
    error: str | None = None


@dataclass
class _Reader:
    """What every archive kind shares: the member checks, the limits, decoding, the layout."""

    staging: Path
    limits: DatasetLimits
    image_limits: ImageLimits
    deadline: float
    entries: int = 0
    expanded: int = 0
    names: set[tuple[str, ...]] = field(default_factory=set)
    files: list[_File] = field(default_factory=list)

    def member(self, name: str, kind: Literal["file", "dir", "other"]) -> tuple[str, ...] | None:
        """Check one member of the archive: its path parts when it is a file to read, None to skip it."""
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise PayloadTooLarge(f"the archive has more than {self.limits.max_entries} members")
        self.check_time()
        parts = _parts(name)
        if kind == "other":
            raise InvalidArchive(f"member {name!r} is a link, a device or a fifo: only files and folders are read")
        if parts in self.names:
            raise InvalidArchive(f"member {name!r} appears twice in the archive")
        self.names.add(parts)
        if kind == "dir" or not parts or JUNK_FOLDERS.intersection(parts):
            return None
        if parts[-1] in JUNK_FILES or parts[-1].startswith("._"):
            return None
        return parts

    def count(self, size: int) -> None:
        """Count `size` more bytes expanded from the archive."""
        self.expanded += size
        if self.expanded > self.limits.max_expanded_bytes:
            raise PayloadTooLarge(f"the archive expands to more than {self.limits.max_expanded_bytes} bytes")

    def check_ratio(self, expanded: int, compressed: int, what: str) -> None:
        if expanded >= RATIO_MIN_BYTES and expanded > self.limits.max_ratio * max(compressed, 1):
            raise PayloadTooLarge(
                f"{what} expands more than {self.limits.max_ratio:g} times its compressed size (an archive bomb)"
            )

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise RequestTimeout(f"reading the archive took longer than {self.limits.max_seconds:g} s")

    def read(self, name: str, parts: tuple[str, ...], stream: IO[bytes], compressed: int | None) -> None:
        """Read one file member (`compressed`: its compressed size, for a zip member's ratio) and
        decode it, keeping its pixels or the decoder's complaint."""
        limit = self.image_limits.max_bytes
        chunks: list[bytes] = []
        size = 0
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if compressed is not None:
                self.count(len(chunk))
                self.check_ratio(size, compressed, f"member {name!r}")
            if size > limit:
                break
            chunks.append(chunk)
        entry = _File(name, parts)
        self.files.append(entry)
        if size > limit:
            entry.error = f"image is over the limit of {limit} bytes"
            return
        try:
            image = decode_image(b"".join(chunks), "RGB", self.image_limits, deadline=self.deadline)
        except ImageError as exc:
            if isinstance(exc, DecodeTimeout):
                self.check_time()  # the archive's budget, not only this image's, may be spent
            entry.error = str(exc)
            return
        entry.pending = self.staging / f"{len(self.files)}.png"
        try:
            image.save(entry.pending, format="PNG")
        except OSError:
            # A full or read-only volume: the server's fault, not the archive's.
            raise Unavailable("the model store cannot be written to; retry later") from None

    def finish(self, identity: str) -> Dataset:
        """Place the kept images as the layout says, check the data set's rules, write its record."""
        files = self.files
        # A single folder wrapping the label folders (what zipping a folder makes) is no label.
        tops = {f.parts[0] for f in files}
        strip = 1 if len(tops) == 1 and any(len(f.parts) > 2 for f in files) else 0
        by_label: dict[str, list[_File]] = {}
        for entry in files:
            parts = entry.parts[strip:]
            if len(parts) != 2:
                where = "is not in a label folder" if len(parts) < 2 else "is in a nested folder"
                entry.error = f"{where}: images go directly in <label>/"
                continue
            by_label.setdefault(parts[0], []).append(entry)
        _check_labels(list(by_label))
        rejected = sorted((RejectedFile(file=f.name, error=f.error) for f in files if f.error), key=lambda r: r.file)
        classes: dict[str, int] = {}
        for label, members in sorted(by_label.items()):
            kept = sorted((f for f in members if f.error is None and f.pending), key=lambda f: f.name)
            classes[label] = len(kept)
            for n, entry in enumerate(kept):
                assert entry.pending is not None
                target = image_path(self.staging, label, n)
                target.parent.mkdir(parents=True, exist_ok=True)
                entry.pending.rename(target)
        self._check_rules(classes, rejected)
        for entry in files:  # the pixels of files placed nowhere
            if entry.pending is not None:
                entry.pending.unlink(missing_ok=True)
        (self.staging / IMAGES_DIR).mkdir(exist_ok=True)
        dataset = Dataset(
            id=identity, classes=classes, images=sum(classes.values()), rejected=rejected, created=time.time()
        )
        write_json(self.staging / DATASET_FILE, dataset.model_dump(mode="json"))
        self.check_time()
        return dataset

    def _check_rules(self, classes: dict[str, int], rejected: list[RejectedFile]) -> None:
        hint = f" (e.g. {rejected[0].file}: {rejected[0].error})" if rejected else ""
        if len(classes) < self.limits.min_classes:
            raise InvalidDataset(
                f"the archive has {len(classes)} label folders with images; at least {self.limits.min_classes} "
                f"are needed, as <label>/<image>{hint}"
            )
        few = [label for label, count in classes.items() if count < self.limits.min_images_per_class]
        if few:
            raise InvalidDataset(
                f"class {few[0]!r} has {classes[few[0]]} images that decode; every class needs at least "
                f"{self.limits.min_images_per_class}{hint}"
            )


def _parts(name: str) -> tuple[str, ...]:
    """A member's path as its parts, refusing what could point outside the archive's folder."""
    if "\\" in name:
        raise InvalidArchive(f"member {name!r} has a backslash in its name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        raise InvalidArchive(f"member {name!r} has an absolute path")
    parts = tuple(unicodedata.normalize("NFC", part) for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise InvalidArchive(f"member {name!r} has a '..' in its path")
    return parts


def _check_labels(labels: list[str]) -> None:
    """Labels (their folders' names) are printable, at most MAX_LABEL_CHARS characters, and differ
    in more than case (each is a folder of the store, on file systems that ignore case too)."""
    folded: dict[str, str] = {}
    for label in labels:
        # 255 bytes: a folder name's limit, which 64 characters of 4-byte UTF-8 would pass.
        if not label.isprintable() or len(label) > MAX_LABEL_CHARS or len(label.encode()) > 255:
            raise InvalidDataset(
                f"label {label!r} is not a printable name of at most {MAX_LABEL_CHARS} characters "
                "(a label is its folder's name)"
            )
        other = folded.setdefault(label.casefold(), label)
        if other != label:
            raise InvalidDataset(f"labels {other!r} and {label!r} differ only in case")


def _read_zip(upload: IO[bytes], reader: _Reader) -> None:
    with zipfile.ZipFile(upload) as archive:
        _read_zip_members(archive, reader)


def _read_zip_members(archive: zipfile.ZipFile, reader: _Reader) -> None:
    infos = archive.infolist()
    if len(infos) > reader.limits.max_entries:
        raise PayloadTooLarge(f"the archive has {len(infos)} members; the limit is {reader.limits.max_entries}")
    wanted: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    for info in infos:
        # Unix file type bits, as `zip --symlinks` and unzip use them (0: an archiver that sets none).
        mode = stat.S_IFMT(info.external_attr >> 16)
        sort: Literal["file", "dir", "other"] = "file"
        if mode not in (0, stat.S_IFREG, stat.S_IFDIR):
            sort = "other"
        elif info.is_dir() or mode == stat.S_IFDIR:
            sort = "dir"
        parts = reader.member(info.filename, sort)
        if info.flag_bits & 0x1:
            raise InvalidArchive(f"member {info.filename!r} is encrypted")
        if parts is not None:
            wanted.append((info, parts))
    declared = sum(info.file_size for info, _ in wanted)
    if declared > reader.limits.max_expanded_bytes:
        raise PayloadTooLarge(f"the archive expands to more than {reader.limits.max_expanded_bytes} bytes")
    for info, parts in wanted:
        with archive.open(info) as stream:
            reader.read(info.filename, parts, stream, info.compress_size)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Counting:
    """A file whose reads are reported to `seen`, which may refuse them (by raising)."""

    def __init__(self, inner: _Readable, seen: Callable[[int], None]) -> None:
        self.inner, self.seen = inner, seen

    def read(self, size: int = -1, /) -> bytes:
        data = self.inner.read(size)
        self.seen(len(data))
        return data

    def seek(self, offset: int, /) -> int:
        raise io.UnsupportedOperation("read in order, once")


def _read_tar(upload: IO[bytes], reader: _Reader, *, gzipped: bool) -> None:
    compressed = 0

    def took(size: int) -> None:
        nonlocal compressed
        compressed += size

    def expanded(size: int) -> None:
        reader.count(size)
        if gzipped:
            # gzip compresses the tar stream as a whole, so the ratio that counts is the stream's.
            reader.check_ratio(reader.expanded, compressed, "the gzip stream")

    source: _Readable = gzip.GzipFile(fileobj=_Counting(upload, took), mode="rb") if gzipped else upload
    try:
        # Stream mode: members in order, each read once, nothing sought back (a gzip cannot be).
        archive = tarfile.open(fileobj=_Counting(source, expanded), mode="r|")  # type: ignore[call-overload]  # noqa: SIM115 (closed below)
    except tarfile.ReadError:
        if gzipped:
            raise UnsupportedMediaType("the gzip stream holds no tar archive") from None
        raise
    with archive:
        for member in _members(archive):
            if member.isdir():
                sort: Literal["file", "dir", "other"] = "dir"
            elif member.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                sort = "file"
            else:
                sort = "other"
            parts = reader.member(member.name, sort)
            if parts is None:
                continue
            if member.size > reader.limits.max_expanded_bytes:
                raise PayloadTooLarge(f"the archive expands to more than {reader.limits.max_expanded_bytes} bytes")
            data = archive.extractfile(member)
            assert data is not None  # a regular member
            reader.read(member.name, parts, data, None)


def _members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := archive.next()) is not None:
        yield member
