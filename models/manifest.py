"""Signed weight manifests: the sha256 of every weight file in a directory, signed with Ed25519.

Layout, in the weights directory:

- ``MANIFEST.json``: ``{"version": 1, "files": {"<name>": "<sha256 hex>", ...}}``, written with
  sorted keys, two-space indent and a final newline. ``<name>`` is the file's path relative to the
  directory, ``/``-separated (``resnet50.safetensors``, ``digits/model.pt.enc``); the hex is lower case.
- ``MANIFEST.json.sig``: the raw 64-byte Ed25519 signature over the exact bytes of
  ``MANIFEST.json``, stored as one line of standard base64 (with padding) and a newline.

Which files a manifest covers (the rule ``write_manifest`` applies and ``verify_directory``
enforces): every file anywhere under the directory whose name ends, in any letter case, with one
of ``WEIGHT_SUFFIXES`` (.safetensors, .pt, .pth, .bin, .enc), i.e. every file the weights loader
could open. Nothing else is covered: the manifest and its signature, ``*.json`` training reports,
editor backups and a volume's ``lost+found`` are neither listed nor checked, because nothing loads
them. A symbolic link to a directory, a weight-named entry that is not a regular file, and a
directory that cannot be listed are refused rather than skipped, so no weight file can hide from
the check. Symbolic links to files are followed: their content is what is hashed.

Verification (``verify_directory``) refuses, naming the file: a listed file whose bytes changed, a
listed file that is missing, a weight file that is not listed, a missing signature when signatures
are required, a signature that verifies under none of the configured public keys, and a malformed
manifest or signature. Each file is hashed once; digests are compared with ``hmac.compare_digest``.
With no public keys and signatures not required, only the hashes are checked (integrity without
authenticity).

Key rotation: configure the new public key next to the old one (``verify_directory`` accepts any
of several keys), re-sign the weights with the new private key and ship them, then drop the old
public key. Sign only trusted build output: ``sign`` lists whatever the directory holds.

    python -m models.manifest keygen --private signing.pem --public signing.pub
    python -m models.manifest sign DIR --key signing.pem
    python -m models.manifest verify DIR --public-key signing.pub [--public-key old.pub] [--require-signature]

Exit status: 0 verified (or written), 1 verification failed (stderr names the file), 2 usage
(bad arguments, unreadable or unusable key files).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models.weights import WeightsIntegrityError, sha256_file

MANIFEST_NAME = "MANIFEST.json"
SIGNATURE_NAME = "MANIFEST.json.sig"
MANIFEST_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".enc")
SIGNATURE_BYTES = 64

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(WeightsIntegrityError):
    """A weights directory does not match its manifest, or the manifest or signature is refused."""


class ManifestKeyError(ManifestError):
    """A key given to sign or verify is not a usable Ed25519 key, or none is given where required."""


def is_weight_file(name: str) -> bool:
    """True for names a manifest must cover (see the module docstring for the rule)."""
    return name.lower().endswith(WEIGHT_SUFFIXES)


def _raise_walk_error(exc: OSError) -> None:
    # os.walk skips unreadable directories silently by default; a file could hide in one.
    where = Path(exc.filename).name if exc.filename else "a subdirectory"
    raise ManifestError(f"cannot list {where} ({exc.strerror}); a manifest must see every weight file") from exc


def weight_files(directory: Path) -> list[str]:
    """The weight files under `directory`: sorted `/`-separated names relative to it."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory, onerror=_raise_walk_error):
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                rel = (here / name).relative_to(directory).as_posix()
                raise ManifestError(
                    f"{rel} in {directory} is a symbolic link to a directory; manifests do not follow them"
                )
        for name in filenames:
            if not is_weight_file(name):
                continue
            path = here / name
            rel = path.relative_to(directory).as_posix()
            # A fifo or a dangling link would block or fail the hashing; refuse it by name instead.
            if not path.is_file():
                raise ManifestError(f"weight file {rel} in {directory} is not a regular file")
            found.append(rel)
    return sorted(found)


def _canonical_manifest(files: dict[str, str]) -> bytes:
    text = json.dumps({"version": MANIFEST_VERSION, "files": files}, indent=2, sort_keys=True)
    return (text + "\n").encode("utf-8")


def _write_atomically(path: Path, data: bytes) -> None:
    # A reader (a starting replica) never sees a half-written manifest or signature.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(directory: Path, also: Sequence[str] = ()) -> Path:
    """Hash every weight file under `directory`, and the files named in `also` (a trained version's
    record, whose categories label its outputs), into its MANIFEST.json; return the manifest's path.
    Every listed file is checked by verify_directory.

    An existing signature is left alone: if the manifest changed, it no longer verifies.
    """
    directory = Path(directory)
    names = weight_files(directory)
    if not names:
        raise ManifestError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {directory}; nothing to list")
    names = sorted(set(names) | set(also))
    path = directory / MANIFEST_NAME
    _write_atomically(path, _canonical_manifest({name: sha256_file(directory / name) for name in names}))
    return path


def generate_keypair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair: (private key as unencrypted PKCS8 PEM, public key as SubjectPublicKeyInfo PEM)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """The Ed25519 private key in an unencrypted PEM; ManifestKeyError otherwise."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The message of the underlying error may quote the input; key material stays out of it.
        raise ManifestKeyError("the signing key is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ManifestKeyError(f"the signing key is a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(pem: bytes, label: str = "public key") -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM; ManifestKeyError naming `label` otherwise."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ManifestKeyError(f"{label} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ManifestKeyError(f"{label} is a {type(key).__name__}, not an Ed25519 public key")
    return key


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """A short, non-secret name for a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(directory: Path, private_key_pem: bytes) -> Path:
    """Sign the existing MANIFEST.json of `directory` as it is on disk; return the signature's path.

    Re-signing an unchanged manifest with a new key is how a signing key is rotated.
    """
    directory = Path(directory)
    key = load_private_key(private_key_pem)
    manifest = directory / MANIFEST_NAME
    try:
        data = manifest.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{MANIFEST_NAME} is missing in {directory}; write it before signing") from None
    path = directory / SIGNATURE_NAME
    _write_atomically(path, base64.b64encode(key.sign(data)) + b"\n")
    return path


def _read_signature(directory: Path) -> bytes | None:
    try:
        text = (directory / SIGNATURE_NAME).read_bytes()
    except FileNotFoundError:
        return None
    try:
        signature = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        signature = b""
    if len(signature) != SIGNATURE_BYTES:
        raise ManifestError(
            f"{SIGNATURE_NAME} in {directory} is not a base64 Ed25519 signature ({SIGNATURE_BYTES} bytes)"
        )
    return signature


def _check_signature(directory: Path, data: bytes, keys: Sequence[Ed25519PublicKey], require: bool) -> None:
    signature = _read_signature(directory)
    if signature is None:
        if require:
            raise ManifestError(f"{SIGNATURE_NAME} is missing in {directory}, and signatures are required")
        return
    if not keys:
        # Nothing to check it against: integrity-only mode (require=True with no keys is refused earlier).
        return
    for key in keys:
        try:
            key.verify(signature, data)
        except InvalidSignature:
            continue
        return
    fingerprints = ", ".join(key_fingerprint(k) for k in keys)
    raise ManifestError(
        f"{SIGNATURE_NAME} in {directory} does not verify under any configured public key ({fingerprints}): "
        f"{MANIFEST_NAME} was changed after signing, or it was signed by another key"
    )


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _valid_name(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return (
        bool(name)
        and not name.startswith("/")
        and "\\" not in name
        and "\x00" not in name
        and all(part not in ("", ".", "..") for part in parts)
        and name == PurePosixPath(name).as_posix()
        and name not in (MANIFEST_NAME, SIGNATURE_NAME)
    )


def parse_manifest(data: bytes, directory: Path) -> dict[str, str]:
    """The `files` mapping of manifest bytes; ManifestError naming what is malformed."""
    where = f"{MANIFEST_NAME} in {directory}"
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{where} is malformed: not JSON ({exc})") from None
    if not isinstance(doc, dict) or set(doc) != {"version", "files"}:
        raise ManifestError(f"{where} is malformed: expected exactly the keys 'version' and 'files'")
    if type(doc["version"]) is not int or doc["version"] != MANIFEST_VERSION:
        raise ManifestError(f"{where} is malformed: version {doc['version']!r}, expected {MANIFEST_VERSION}")
    files = doc["files"]
    if not isinstance(files, dict):
        raise ManifestError(f"{where} is malformed: 'files' is not an object")
    for name, digest in files.items():
        if not _valid_name(name):
            raise ManifestError(f"{where} is malformed: {name!r} is not a relative path inside the directory")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise ManifestError(f"{where} is malformed: the sha256 of {name} is not 64 lower-case hex digits")
    return dict(files)


def verify_directory(directory: Path, public_keys: Sequence[bytes], require_signature: bool) -> dict[str, str]:
    """Check `directory` against its signed manifest; return {name: sha256} or raise ManifestError.

    `public_keys` are PEM Ed25519 public keys; a signature by any one of them is accepted.
    """
    directory = Path(directory)
    keys = [load_public_key(pem, f"public key #{i}") for i, pem in enumerate(public_keys, start=1)]
    if require_signature and not keys:
        raise ManifestKeyError("signatures are required but no public key is configured")
    if not directory.is_dir():
        raise ManifestError(f"weights directory {directory} does not exist or is not a directory")
    try:
        data = (directory / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{MANIFEST_NAME} is missing in {directory}") from None
    # The signature is checked before the (untrusted) manifest is parsed.
    _check_signature(directory, data, keys, require_signature)
    listed = parse_manifest(data, directory)

    present = set(weight_files(directory))
    problems = [f"{name} is not listed in {MANIFEST_NAME} (added file)" for name in sorted(present - set(listed))]
    problems += [
        f"{name} is listed but missing" for name in sorted(set(listed) - present) if not (directory / name).is_file()
    ]
    if problems:
        raise ManifestError(f"weights directory {directory} does not match its manifest: {'; '.join(problems)}")

    for name, expected in sorted(listed.items()):
        actual = sha256_file(directory / name)
        if not hmac.compare_digest(actual, expected):
            problems.append(f"{name} has sha256 {actual}, the manifest lists {expected} (file changed)")
    if problems:
        raise ManifestError(f"weights directory {directory} does not match its manifest: {'; '.join(problems)}")
    return listed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.manifest",
        description="Write, sign and verify the signed sha256 manifest of a weights directory.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="write a new Ed25519 key pair (PEM); refuses to overwrite files")
    keygen.add_argument("--private", type=Path, required=True, help="where to write the private key (mode 0600)")
    keygen.add_argument("--public", type=Path, required=True, help="where to write the public key")
    sign = sub.add_parser("sign", help=f"write {MANIFEST_NAME} for DIR and sign it")
    sign.add_argument("directory", type=Path, metavar="DIR")
    sign.add_argument("--key", type=Path, required=True, help="the PEM Ed25519 private key")
    verify = sub.add_parser("verify", help=f"check DIR against its {MANIFEST_NAME} and signature")
    verify.add_argument("directory", type=Path, metavar="DIR")
    verify.add_argument(
        "--public-key", type=Path, action="append", default=[], help="a PEM Ed25519 public key; repeat for rotation"
    )
    verify.add_argument("--require-signature", action="store_true", help="refuse an unsigned manifest")
    return parser


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite a key, least of all a private key still in use.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _keygen(args: argparse.Namespace) -> int:
    for path in (args.private, args.public):
        if path.exists():
            print(f"manifest: {path} exists; refusing to overwrite it", file=sys.stderr)
            return EXIT_USAGE
    private_pem, public_pem = generate_keypair()
    try:
        _write_new(args.private, private_pem, 0o600)
        _write_new(args.public, public_pem, 0o644)
    except OSError as exc:
        print(f"manifest: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {args.private} and {args.public} (key {key_fingerprint(load_public_key(public_pem))})")
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    if not args.directory.is_dir():
        print(f"manifest: {args.directory} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    try:
        pem = args.key.read_bytes()
        load_private_key(pem)
    except OSError as exc:
        print(f"manifest: cannot read {args.key}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except ManifestKeyError as exc:
        print(f"manifest: {args.key}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        manifest = write_manifest(args.directory)
        signature = sign_manifest(args.directory, pem)
    except (ManifestError, OSError) as exc:
        print(f"manifest: {exc}", file=sys.stderr)
        return EXIT_FAILED
    count = len(parse_manifest(manifest.read_bytes(), args.directory))
    print(f"wrote {manifest} ({count} files) and {signature}")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    if not args.directory.is_dir():
        print(f"manifest: {args.directory} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    pems: list[bytes] = []
    for path in args.public_key:
        try:
            pems.append(path.read_bytes())
            load_public_key(pems[-1], str(path))
        except OSError as exc:
            print(f"manifest: cannot read {path}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        except ManifestKeyError as exc:
            print(f"manifest: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.require_signature and not pems:
        print("manifest: --require-signature needs at least one --public-key", file=sys.stderr)
        return EXIT_USAGE
    try:
        files = verify_directory(args.directory, pems, args.require_signature)
    except (ManifestError, OSError) as exc:
        print(f"manifest: verification failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    signed = pems and (args.directory / SIGNATURE_NAME).is_file()
    how = "signature verified" if signed else "hashes only, no signature checked"
    print(f"{args.directory}: {len(files)} files match {MANIFEST_NAME} ({how})")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line in `argv`; return the exit status."""
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:
        # argparse exits 2 on bad arguments and 0 for --help; return that status instead.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "keygen":
        return _keygen(args)
    if args.command == "sign":
        return _sign(args)
    return _verify(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
