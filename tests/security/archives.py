"""A bad-archive corpus for `POST /v1/datasets`: each case with the status and error code it gets.

    python -m tests.security.archives OUT_DIR     # writes every case as a file, plus manifest.json

Built in memory from seeded synthetic pictures, in well under a second, for the limits in LIMITS
(small, so that the size cases stay small). Statuses (docs/training.md): 415 not a zip, tar or
tar.gz by content; 400 `invalid_archive` malformed, or holding absolute or `..` names,
backslashes, links, devices, fifos, duplicate or encrypted members; 413 `payload_too_large`
over a limit (members, expanded bytes, a compression ratio); 422 `invalid_dataset` readable but
no data set. Every one of them leaves the store as it was.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import json
import stat
import struct
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deployments.args import DatasetLimits
from deployments.datasets import RATIO_MIN_BYTES
from tests.security.corpus import encode, picture, write_corpus

LIMITS = DatasetLimits(
    max_archive_bytes=16 * 1024 * 1024,
    max_entries=64,
    max_expanded_bytes=3 * 1024 * 1024,
    max_ratio=50.0,
    min_classes=2,
    min_images_per_class=3,
)
LABELS = ("circle", "square")
FAST = 1  # zlib's level: the size cases deflate megabytes


@dataclass(frozen=True)
class ArchiveCase:
    """One uploaded archive: what it is, and the status and error code it gets."""

    name: str
    data: bytes
    status: int
    code: str

    @property
    def filename(self) -> str:
        """A file name for the case (the server never looks at it)."""
        return self.name + ".bin"


def generate(out_dir: Path | None = None) -> list[ArchiveCase]:
    """Every case, written to `out_dir` (one file each, plus manifest.json) if given."""
    cases = list(_cases())
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for case in cases:
            (out_dir / case.filename).write_bytes(case.data)
        manifest = {
            "limits": LIMITS.model_dump(),
            "cases": [
                {"name": c.name, "file": c.filename, "bytes": len(c.data), "status": c.status, "code": c.code}
                for c in cases
            ],
        }
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return cases


@functools.cache
def _cases() -> tuple[ArchiveCase, ...]:
    cases = (*_not_archives(), *_damaged(), *_escapes(), *_specials(), *_over_limits(), *_not_datasets())
    names = [c.name for c in cases]
    if len(names) != len(set(names)):
        raise RuntimeError("archive case names must be unique")
    return cases


# ---- building blocks -------------------------------------------------------------------


def image(seed: int) -> bytes:
    """A small PNG, different for each seed."""
    return encode(picture(16, 16, seed), "PNG")


def good_members(per_class: int = LIMITS.min_images_per_class) -> dict[str, bytes]:
    """`<label>/<n>.png` members enough for a data set under LIMITS."""
    return {f"{label}/{n}.png": image(10 * i + n) for i, label in enumerate(LABELS) for n in range(per_class)}


def zip_of(members: dict[str, bytes], *extra: tuple[zipfile.ZipInfo | str, bytes]) -> bytes:
    """A zip of `members` (deflated), then `extra` members as given (ZipInfo for special ones);
    the same bytes on every run."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compresslevel=FAST) as archive:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate names some cases hold
        for name, data in [*members.items(), *extra]:
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)) if isinstance(name, str) else name
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buf.getvalue()


def tar_of(members: dict[str, bytes], *extra: tarfile.TarInfo, compression: str = "") -> bytes:
    """A tar (`compression` "gz" or "bz2" for those) of `members`, then `extra` header-only members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    plain = buf.getvalue()
    if compression == "gz":
        return gzip.compress(plain, compresslevel=FAST, mtime=0)
    return bz2.compress(plain) if compression == "bz2" else plain


def tar_entry(name: str, kind: bytes, **fields: object) -> tarfile.TarInfo:
    """A header-only tar member of type `kind` (tarfile.SYMTYPE, CHRTYPE, ...)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def zip_special(name: str, mode: int) -> zipfile.ZipInfo:
    """A zip member whose Unix mode (as `zip --symlinks` writes it) is `mode`."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: unzip honours the mode bits
    info.external_attr = mode << 16
    return info


def patch_zip(data: bytes, name: str, **fields: int) -> bytes:
    """The zip with the header fields `flags`, `method` or `file_size` of member `name` rewritten, in
    its local header and its central directory entry both (what a hand-made hostile zip holds)."""
    local = {"flags": (6, "<H"), "method": (8, "<H"), "file_size": (22, "<I")}
    central = {"flags": (8, "<H"), "method": (10, "<H"), "file_size": (24, "<I")}
    out = bytearray(data)
    encoded = name.encode()
    for signature, offsets, name_at, name_length_at in (
        (b"PK\x03\x04", local, 30, 26),
        (b"PK\x01\x02", central, 46, 28),
    ):
        at = out.find(signature)
        while at >= 0:
            (length,) = struct.unpack_from("<H", out, at + name_length_at)
            if bytes(out[at + name_at : at + name_at + length]) == encoded:
                for field, value in fields.items():
                    offset, fmt = offsets[field]
                    struct.pack_into(fmt, out, at + offset, value)
            at = out.find(signature, at + 4)
    return bytes(out)


def low_entropy(size: int, seed: int) -> bytes:
    """Bytes that deflate less than 2 times (random nibbles), quickly: far under any bomb ratio."""
    return (np.random.default_rng(seed).integers(0, 16, size, dtype=np.uint8)).tobytes()


# ---- the cases -------------------------------------------------------------------------


def _not_archives() -> Iterator[ArchiveCase]:
    def refused(name: str, data: bytes) -> ArchiveCase:
        return ArchiveCase(name, data, 415, "unsupported_media_type")

    yield refused("empty_file", b"")
    yield refused("a_png", image(0))
    yield refused("plain_text", b"circle/0.png\nsquare/0.png\n")
    yield refused("bzip2_tar", tar_of(good_members(), compression="bz2"))
    yield refused("gzip_of_a_png", gzip.compress(image(0), mtime=0))
    yield refused("seven_zip_magic", b"7z\xbc\xaf\x27\x1c" + bytes(64))
    # A zip behind a prefix (a self-extracting archive): a zip only to readers that search for it.
    yield refused("zip_after_a_prefix", b"MZ" + bytes(62) + zip_of(good_members()))


def _damaged() -> Iterator[ArchiveCase]:
    def invalid(name: str, data: bytes) -> ArchiveCase:
        return ArchiveCase(name, data, 400, "invalid_archive")

    members = good_members()
    zipped = zip_of(members)
    yield invalid("zip_truncated", zipped[: len(zipped) // 2])
    yield invalid("zip_magic_then_zeros", b"PK\x03\x04" + bytes(2048))
    tar_gz = tar_of(members, compression="gz")
    yield invalid("tar_gz_truncated", tar_gz[: len(tar_gz) // 2])
    # Cut inside the last member's data (after it, only end-of-archive blocks and padding).
    plain = tar_of({**members, "square/big.png": low_entropy(64 * 1024, 1)})
    with tarfile.open(fileobj=io.BytesIO(plain)) as archive:
        big_data_at = archive.getmember("square/big.png").offset_data
    yield invalid("tar_truncated_in_a_member", plain[: big_data_at + 1000])
    yield invalid("tar_magic_then_garbage", bytes(257) + b"ustar\x0000" + b"\xff" * 1786)
    # Headers that declare a method no reader has (PPMd), or less data than the member holds.
    yield invalid("zip_unknown_method", patch_zip(zipped, "circle/0.png", method=98))
    yield invalid("zip_declares_fewer_bytes", patch_zip(zipped, "circle/0.png", file_size=10))


def _escapes() -> Iterator[ArchiveCase]:
    def invalid(name: str, data: bytes) -> ArchiveCase:
        return ArchiveCase(name, data, 400, "invalid_archive")

    members = good_members()
    png = image(99)
    for kind, evil in (
        ("absolute", "/etc/circle/evil.png"),
        ("dotdot", "circle/../../evil.png"),
        ("dotdot_first", "../square/evil.png"),
        ("backslash", "circle\\..\\..\\evil.png"),
        ("drive_letter", "C:/circle/evil.png"),
    ):
        yield invalid(f"zip_{kind}", zip_of(members, (evil, png)))
    for kind, evil in (("absolute", "/tmp/square/evil.png"), ("dotdot", "square/../../../evil.png")):
        yield invalid(f"tar_{kind}", tar_of({**members, evil: png}))
    # A pax header's path replaces the name in the member's own header.
    pax = tarfile.TarInfo("circle/harmless.png")
    pax.size = len(png)
    pax.pax_headers = {"path": "../../evil.png"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(pax, io.BytesIO(png))
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    yield invalid("tar_pax_path_escapes", buf.getvalue())
    yield invalid("zip_duplicate_name", zip_of(members, ("circle/0.png", png)))
    yield invalid("zip_duplicate_after_dot", zip_of(members, ("./circle/0.png", png)))
    yield invalid("tar_duplicate_name", tar_of(members, tar_entry("square/0.png", tarfile.REGTYPE)))


def _specials() -> Iterator[ArchiveCase]:
    def invalid(name: str, data: bytes) -> ArchiveCase:
        return ArchiveCase(name, data, 400, "invalid_archive")

    members = good_members()
    yield invalid(
        "zip_symlink", zip_of(members, (zip_special("circle/link.png", stat.S_IFLNK | 0o777), b"/etc/passwd"))
    )
    yield invalid("zip_fifo", zip_of(members, (zip_special("circle/pipe.png", stat.S_IFIFO | 0o644), b"")))
    yield invalid("zip_device", zip_of(members, (zip_special("circle/dev.png", stat.S_IFCHR | 0o644), b"")))
    yield invalid("zip_encrypted", patch_zip(zip_of(members), "square/1.png", flags=0x1))
    for kind, entry in (
        ("symlink", tar_entry("circle/link.png", tarfile.SYMTYPE, linkname="/etc/passwd")),
        ("symlink_relative", tar_entry("circle/link.png", tarfile.SYMTYPE, linkname="../../x")),
        ("hardlink", tar_entry("circle/link.png", tarfile.LNKTYPE, linkname="circle/0.png")),
        ("char_device", tar_entry("circle/dev.png", tarfile.CHRTYPE, devmajor=1, devminor=3)),
        ("block_device", tar_entry("circle/dev.png", tarfile.BLKTYPE, devmajor=8, devminor=0)),
        ("fifo", tar_entry("circle/pipe.png", tarfile.FIFOTYPE)),
    ):
        yield invalid(f"tar_{kind}", tar_of(members, entry))
    yield invalid(
        "tar_gz_symlink", tar_of(members, tar_entry("a.png", tarfile.SYMTYPE, linkname="/"), compression="gz")
    )


def _over_limits() -> Iterator[ArchiveCase]:
    def too_large(name: str, data: bytes) -> ArchiveCase:
        return ArchiveCase(name, data, 413, "payload_too_large")

    members = good_members()
    many = {f"circle/extra_{n}.png": image(n) for n in range(LIMITS.max_entries)}
    yield too_large("zip_too_many_members", zip_of({**members, **many}))
    yield too_large("tar_too_many_members", tar_of({**members, **many}))
    # Zeros deflate about 1000 times: one member is a bomb, whatever the total.
    bomb = bytes(2 * RATIO_MIN_BYTES)
    yield too_large("zip_bomb_member", zip_of(members, ("circle/bomb.png", bomb)))
    yield too_large("tar_gz_bomb", tar_of({**members, "circle/bomb.png": bomb}, compression="gz"))
    # Each member under the ratio, all of them together over the expanded size: the zip's
    # declared sizes refuse it early; the tar stream is counted as it is decompressed.
    share = LIMITS.max_expanded_bytes // 3
    heavy = {f"square/heavy_{n}.png": low_entropy(share, n) for n in range(4)}
    yield too_large("zip_expands_over_the_limit", zip_of({**members, **heavy}))
    yield too_large("tar_gz_expands_over_the_limit", tar_of({**members, **heavy}, compression="gz"))


def _not_datasets() -> Iterator[ArchiveCase]:
    def invalid(name: str, data: bytes) -> ArchiveCase:
        return ArchiveCase(name, data, 422, "invalid_dataset")

    per_class = LIMITS.min_images_per_class
    yield invalid("empty_zip", zip_of({}))
    yield invalid("one_class", zip_of({f"circle/{n}.png": image(n) for n in range(2 * per_class)}))
    yield invalid("flat_files", zip_of({f"{n}.png": image(n) for n in range(2 * per_class)}))
    few = {**good_members(), "triangle/0.png": image(50)}
    yield invalid("a_class_with_too_few_images", tar_of(few))
    corrupt = {
        name: data[: len(data) // 2] if name.startswith("square/") else data for name, data in good_members().items()
    }
    yield invalid("a_class_whose_images_do_not_decode", zip_of(corrupt))
    yield invalid("label_too_long", zip_of({**good_members(), **_class("x" * 65)}))
    yield invalid("label_not_printable", zip_of({**good_members(), **_class("tri\x07angle")}))
    yield invalid("labels_differ_only_in_case", zip_of({**good_members(), **_class("Circle")}))


def _class(label: str) -> dict[str, bytes]:
    return {f"{label}/{n}.png": image(100 + n) for n in range(LIMITS.min_images_per_class)}


# ---- CLI -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Write the corpus to a directory."""
    return write_corpus(argv, "tests.security.archives", __doc__ or "", generate)


if __name__ == "__main__":
    sys.exit(main())
