"""Encryption at rest for weight files: AES-256-GCM, keys from the environment (a Kubernetes Secret).

Weights copied out of an image or a volume are useless without the key. The loader
(models.weights.load_state_dict_file) decrypts ``<name>.safetensors.enc`` / ``<name>.pt.enc`` in
memory; decrypted weights are never written to disk, and this tool has no ``decrypt`` command.

File format, ``<name>.enc`` (``resnet50.safetensors.enc``)::

    b"VMENC1" | key id length n (1 byte) | key id (n ASCII bytes) | nonce (12 random bytes) | ciphertext | GCM tag (16 bytes)

The header (magic, length byte and key id) is the GCM associated data, so a changed key id fails
the tag. The bytes are those of ``AESGCM(key).encrypt(nonce, plaintext, header)``; files are
written with the streaming GCM interface because AESGCM refuses data over 2 GiB.

Keys: ``VISION_MAAS_WEIGHTS_KEYS`` holds comma-separated ``key_id:base64`` entries, each a
32-byte key in standard base64 (with padding), for example from a Kubernetes Secret exposed to the
container as that environment variable. A key id is 1-32 characters of ``[A-Za-z0-9._-]``
starting with a letter or digit: shorter than any encoded key, so an error message that names a
key id can never be quoting a key. No message names key material.

Key rotation (the file's sha256 changes, so pins and signed manifests change with it):

1. ``python -m models.crypto genkey --id k2``; add the line to the Secret after the old entry
   (``k1:...,k2:...``) and roll the pods: they still read files under k1.
2. With both keys in the environment, ``python -m models.crypto rotate FILE.enc --to k2`` for each
   file; it prints the new sha256. Update the ``sha256`` pins in the serve config (and re-sign the
   manifest, models.manifest), and deploy the re-encrypted files.
3. Remove ``k1`` from the Secret and roll the pods again.

    python -m models.crypto genkey --id k1
    python -m models.crypto encrypt model.safetensors [--key-id k1] [--out model.safetensors.enc]
    python -m models.crypto rotate model.safetensors.enc --to k2 [--out DST]

``encrypt`` uses the first key in the environment unless ``--key-id`` names another.
Exit status: 0 done, 1 the file could not be read, encrypted or decrypted, 2 usage (bad
arguments, or keys missing or malformed in the environment).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from models.weights import ENCRYPTED_SUFFIX, WeightsError, WeightsIntegrityError, sha256_file

KEYS_ENV = "VISION_MAAS_WEIGHTS_KEYS"
MAGIC = b"VMENC1"
# The formats the loader reads; `<name><suffix>.enc` tells it which one is inside.
PLAIN_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_KEY_ID_CHARS = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_CHUNK = 1 << 20

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class KeyConfigError(WeightsError):
    """The weights keys are missing or malformed, or a key id is not configured; never quotes a key."""


class DecryptionError(WeightsIntegrityError):
    """An encrypted weight file cannot be opened: not encrypted, no key for it, wrong key, or altered."""


def valid_key_id(key_id: str) -> bool:
    """True if `key_id` is 1-32 characters of [A-Za-z0-9._-] starting with a letter or digit."""
    return _KEY_ID.fullmatch(key_id) is not None


def _check_key_id(key_id: str, where: str) -> None:
    if not valid_key_id(key_id):
        # Not quoted: a malformed id may be a key pasted in the wrong place.
        raise KeyConfigError(
            f"{where}: a key id must be 1-{MAX_KEY_ID_CHARS} characters of [A-Za-z0-9._-] starting with a letter or digit"
        )


def load_keys(env: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """The AES-256 keys in $VISION_MAAS_WEIGHTS_KEYS of `env` (default os.environ), in order; {} if unset."""
    source = os.environ if env is None else env
    keys: dict[str, bytes] = {}
    entries = [entry.strip() for entry in source.get(KEYS_ENV, "").split(",")]
    for position, entry in enumerate((e for e in entries if e), start=1):
        where = f"{KEYS_ENV} entry {position}"
        key_id, sep, value = entry.partition(":")
        key_id, value = key_id.strip(), value.strip()
        if not sep or not value:
            raise KeyConfigError(f"{where} is not key_id:base64")
        _check_key_id(key_id, where)
        try:
            key = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise KeyConfigError(f"{where} (key id {key_id!r}): the key is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise KeyConfigError(f"{where} (key id {key_id!r}): the key is {len(key)} bytes; AES-256 needs {KEY_BYTES}")
        if key_id in keys:
            raise KeyConfigError(f"{where}: key id {key_id!r} appears more than once")
        keys[key_id] = key
    return keys


def generate_key() -> bytes:
    """A new random 32-byte AES-256 key."""
    return os.urandom(KEY_BYTES)


def format_key(key_id: str, key: bytes) -> str:
    """One `key_id:base64` entry of $VISION_MAAS_WEIGHTS_KEYS."""
    _check_key_id(key_id, "format_key")
    if len(key) != KEY_BYTES:
        raise KeyConfigError(f"key {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}")
    return f"{key_id}:{base64.b64encode(key).decode('ascii')}"


def _header(key_id: str) -> bytes:
    encoded = key_id.encode("ascii")
    return MAGIC + bytes([len(encoded)]) + encoded


def _choose_key(key_id: str | None, keys: Mapping[str, bytes]) -> tuple[str, bytes]:
    if not keys:
        raise KeyConfigError(f"no weights keys are configured; set {KEYS_ENV}")
    if key_id is None:
        key_id = next(iter(keys))
    _check_key_id(key_id, "encryption key id")
    if key_id not in keys:
        raise KeyConfigError(f"key id {key_id!r} is not configured ({KEYS_ENV} has {', '.join(keys)})")
    key = keys[key_id]
    if len(key) != KEY_BYTES:
        raise KeyConfigError(f"key {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}")
    return key_id, key


def _encrypt_chunks(chunks: Iterable[bytes], key_id: str, key: bytes) -> Iterable[bytes]:
    header = _header(key_id)
    nonce = os.urandom(NONCE_BYTES)  # random per file: a key never sees the same nonce twice in practice
    encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(header)
    yield header + nonce
    for chunk in chunks:
        yield encryptor.update(chunk)
    yield encryptor.finalize()
    yield encryptor.tag


def encrypt_bytes(plaintext: bytes, key_id: str | None, keys: Mapping[str, bytes]) -> bytes:
    """`plaintext` encrypted under `key_id` (default: the first key) in the .enc format."""
    chosen, key = _choose_key(key_id, keys)
    return b"".join(_encrypt_chunks([plaintext], chosen, key))


def header_key_id(data: bytes, name: str = "encrypted weights") -> str:
    """The key id an encrypted file names; DecryptionError if `data` is not in the .enc format."""
    if data[: len(MAGIC)] != MAGIC:
        raise DecryptionError(f"{name} is not an encrypted weights file (no {MAGIC.decode()} header)")
    start = len(MAGIC) + 1
    length = data[len(MAGIC)] if len(data) > len(MAGIC) else 0
    try:
        key_id = bytes(data[start : start + length]).decode("ascii")
    except UnicodeDecodeError:
        key_id = ""
    if not valid_key_id(key_id) or len(key_id) != length:
        raise DecryptionError(f"{name} has a malformed encryption header (bad key id)")
    if len(data) < start + length + NONCE_BYTES + TAG_BYTES:
        raise DecryptionError(f"{name} is truncated: shorter than its encryption header and tag")
    return key_id


def decrypt_bytes(data: bytes, keys: Mapping[str, bytes], name: str = "encrypted weights") -> bytes:
    """The plaintext of an .enc file's bytes, authenticated; DecryptionError naming `name` and the key id."""
    key_id = header_key_id(data, name)
    key = keys.get(key_id)
    if key is None:
        have = ", ".join(keys) if keys else "no keys"
        raise DecryptionError(
            f"{name} is encrypted with key id {key_id!r}, which is not configured ({KEYS_ENV} has {have})"
        )
    if len(key) != KEY_BYTES:
        raise KeyConfigError(f"key {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}")
    header_end = len(MAGIC) + 1 + len(key_id)
    view = memoryview(data)
    nonce = bytes(view[header_end : header_end + NONCE_BYTES])
    decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).decryptor()
    decryptor.authenticate_additional_data(bytes(view[:header_end]))
    # The plaintext is used only after the tag checks out below.
    plaintext = decryptor.update(view[header_end + NONCE_BYTES : -TAG_BYTES])
    try:
        decryptor.finalize_with_tag(bytes(view[-TAG_BYTES:]))
    except InvalidTag:
        raise DecryptionError(
            f"{name} does not decrypt with key id {key_id!r}: the key under that id is not the one it was "
            "encrypted with, or the file was altered"
        ) from None
    return plaintext


def _write_atomically(dst: Path, chunks: Iterable[bytes]) -> str:
    """Write `chunks` to `dst` through a temporary file beside it; return the sha256 of what was written."""
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                digest.update(chunk)
                fh.write(chunk)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))


def encrypt_file(src: Path, dst: Path, key_id: str | None, keys: Mapping[str, bytes]) -> Path:
    """Encrypt `src` into `dst` under `key_id` (default: the first key), streaming; return `dst`."""
    src, dst = Path(src), Path(dst)
    chosen, key = _choose_key(key_id, keys)
    if _same_file(src, dst):
        raise WeightsError(f"{src.name}: the encrypted file must not replace its source")
    with src.open("rb") as fh:
        if fh.read(len(MAGIC)) == MAGIC:
            raise WeightsError(f"{src.name} is already encrypted; use rotate to change its key")
        fh.seek(0)
        _write_atomically(dst, _encrypt_chunks(iter(lambda: fh.read(_CHUNK), b""), chosen, key))
    return dst


def reencrypt_file(path: Path, to_key_id: str, keys: Mapping[str, bytes], dst: Path | None = None) -> Path:
    """Re-encrypt an .enc file under `to_key_id` (both keys in `keys`), in memory; return where it was written."""
    path = Path(path)
    _choose_key(to_key_id, keys)  # a bad target fails before anything is read
    plaintext = decrypt_bytes(path.read_bytes(), keys, path.name)
    target = path if dst is None else Path(dst)
    _write_atomically(target, [encrypt_bytes(plaintext, to_key_id, keys)])
    return target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.crypto",
        description=f"Encrypt weight files with AES-256-GCM under keys from ${KEYS_ENV} (key_id:base64,...).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    genkey = sub.add_parser("genkey", help=f"print a new key as one key_id:base64 entry of ${KEYS_ENV}")
    genkey.add_argument("--id", required=True, dest="key_id", help="the new key's id, for example k2")
    encrypt = sub.add_parser("encrypt", help="encrypt SRC into SRC.enc (or --out)")
    encrypt.add_argument("src", type=Path, metavar="SRC")
    encrypt.add_argument("--key-id", help="the key to encrypt with (default: the first configured)")
    encrypt.add_argument("--out", type=Path, help="the encrypted file (default: SRC.enc)")
    rotate = sub.add_parser("rotate", help="re-encrypt FILE.enc under another key (both keys configured)")
    rotate.add_argument("file", type=Path, metavar="FILE.enc")
    rotate.add_argument("--to", required=True, dest="key_id", help="the key id to re-encrypt under")
    rotate.add_argument("--out", type=Path, help="write here instead of replacing FILE.enc")
    return parser


def _usage(message: str) -> int:
    print(f"crypto: {message}", file=sys.stderr)
    return EXIT_USAGE


def _check_encrypted_name(path: Path) -> str | None:
    """Why `path` is not a name the loader reads as encrypted weights, or None."""
    if not path.name.endswith(ENCRYPTED_SUFFIX) or not path.name[: -len(ENCRYPTED_SUFFIX)].endswith(PLAIN_SUFFIXES):
        return f"{path.name}: encrypted weights are named <name>{{{','.join(PLAIN_SUFFIXES)}}}{ENCRYPTED_SUFFIX}"
    return None


def _report(path: Path, key_id: str) -> None:
    # The pin to configure is the sha256 of the encrypted bytes on disk.
    print(f"{path} sha256:{sha256_file(path)} key:{key_id}")


def _run(args: argparse.Namespace) -> int:
    if args.command == "genkey":
        if not valid_key_id(args.key_id):
            return _usage(
                f"--id must be 1-{MAX_KEY_ID_CHARS} characters of [A-Za-z0-9._-] starting with a letter or digit"
            )
        print(format_key(args.key_id, generate_key()))
        return EXIT_OK
    keys = load_keys()
    if args.command == "encrypt":
        if args.src.name.endswith(ENCRYPTED_SUFFIX):
            return _usage(f"{args.src.name} is already encrypted; use rotate to change its key")
        dst = args.out or args.src.with_name(args.src.name + ENCRYPTED_SUFFIX)
        if (problem := _check_encrypted_name(dst)) is not None:
            return _usage(problem)
        key_id, _ = _choose_key(args.key_id, keys)
        encrypt_file(args.src, dst, key_id, keys)
        _report(dst, key_id)
        return EXIT_OK
    _choose_key(args.key_id, keys)
    dst = args.out or args.file
    if (problem := _check_encrypted_name(dst)) is not None:
        return _usage(problem)
    reencrypt_file(args.file, args.key_id, keys, dst)
    _report(dst, args.key_id)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line in `argv`; return the exit status."""
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:
        # argparse exits 2 on bad arguments and 0 for --help; return that status instead.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _run(args)
    except KeyConfigError as exc:
        return _usage(str(exc))
    except (WeightsError, OSError) as exc:
        print(f"crypto: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
