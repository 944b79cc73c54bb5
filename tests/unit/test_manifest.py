"""Signed weight manifests: every attack on a signed weights directory is refused, naming the file."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from safetensors.torch import save_file
from torch import nn

from models import manifest as mf
from models.weights import WeightsIntegrityError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _state_dict(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    return {k: v.contiguous() for k, v in module.state_dict().items()}


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    """A weights directory: a safetensors file, a weights-only .pt in a subdirectory, a JSON report."""
    directory = tmp_path / "weights"
    (directory / "heads").mkdir(parents=True)
    save_file(_state_dict(0), str(directory / "model.safetensors"))
    torch.save(_state_dict(1), directory / "heads" / "head.pt")
    (directory / "model.json").write_text('{"accuracy": 0.99}\n')
    return directory


@pytest.fixture
def old_key() -> tuple[bytes, bytes]:
    """An Ed25519 key pair (private PEM, public PEM): the key in use before a rotation."""
    return mf.generate_keypair()


@pytest.fixture
def new_key() -> tuple[bytes, bytes]:
    """Another Ed25519 key pair: the key a rotation moves to."""
    return mf.generate_keypair()


@pytest.fixture
def signed_dir(weights_dir: Path, old_key: tuple[bytes, bytes]) -> Path:
    """`weights_dir` with a manifest signed by `old_key`."""
    mf.write_manifest(weights_dir)
    mf.sign_manifest(weights_dir, old_key[0])
    return weights_dir


def _flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_signed_directory_verifies_when_nothing_changed(signed_dir: Path, old_key: tuple[bytes, bytes]) -> None:
    files = mf.verify_directory(signed_dir, [old_key[1]], require_signature=True)
    assert sorted(files) == ["heads/head.pt", "model.safetensors"]
    assert files["model.safetensors"] == mf.sha256_file(signed_dir / "model.safetensors")


def test_manifest_has_the_documented_format_when_written(signed_dir: Path, old_key: tuple[bytes, bytes]) -> None:
    data = (signed_dir / mf.MANIFEST_NAME).read_bytes()
    doc = json.loads(data)
    assert doc == {
        "version": 1,
        "files": {name: mf.sha256_file(signed_dir / name) for name in ("heads/head.pt", "model.safetensors")},
    }
    assert data == (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    # The signature file is one line of base64: the raw Ed25519 signature over the manifest's exact bytes.
    signature = base64.b64decode((signed_dir / mf.SIGNATURE_NAME).read_bytes().strip(), validate=True)
    assert len(signature) == 64
    mf.load_public_key(old_key[1]).verify(signature, data)


def test_directory_is_refused_naming_the_file_when_a_byte_of_a_signed_weight_file_flips(
    signed_dir: Path, old_key: tuple[bytes, bytes]
) -> None:
    _flip_byte(signed_dir / "heads" / "head.pt", offset=200)
    with pytest.raises(mf.ManifestError, match=r"heads/head\.pt has sha256 .*file changed") as info:
        mf.verify_directory(signed_dir, [old_key[1]], require_signature=True)
    assert isinstance(info.value, WeightsIntegrityError)  # the serving layer's handling applies
    assert "model.safetensors" not in str(info.value)


def test_directory_is_refused_when_a_flipped_file_is_covered_by_a_rewritten_manifest(
    signed_dir: Path, old_key: tuple[bytes, bytes]
) -> None:
    # The attacker also updates the manifest's hash; the signature over the manifest then fails.
    _flip_byte(signed_dir / "model.safetensors")
    mf.write_manifest(signed_dir)
    with pytest.raises(mf.ManifestError, match=r"MANIFEST\.json\.sig .* does not verify"):
        mf.verify_directory(signed_dir, [old_key[1]], require_signature=False)


@pytest.mark.parametrize(
    "added", ["extra.safetensors", "heads/extra.pth", "backdoor.bin", "model.safetensors.enc", "UPPER.PT"]
)
def test_directory_is_refused_naming_the_file_when_a_weight_file_is_added(
    signed_dir: Path, old_key: tuple[bytes, bytes], added: str
) -> None:
    (signed_dir / added).write_bytes(b"not listed")
    with pytest.raises(mf.ManifestError, match=rf"{re.escape(added)} is not listed .*added file"):
        mf.verify_directory(signed_dir, [old_key[1]], require_signature=True)


def test_directory_verifies_when_files_that_nothing_loads_are_added(
    signed_dir: Path, old_key: tuple[bytes, bytes]
) -> None:
    # The rule covers what the loader can open; reports, notes and backups are not weights.
    (signed_dir / "notes.txt").write_text("hello")
    (signed_dir / "model.json").write_text('{"accuracy": 1.0}\n')
    (signed_dir / "lost+found").mkdir()
    assert len(mf.verify_directory(signed_dir, [old_key[1]], require_signature=True)) == 2


def test_directory_is_refused_naming_the_file_when_a_listed_file_is_removed(
    signed_dir: Path, old_key: tuple[bytes, bytes]
) -> None:
    (signed_dir / "heads" / "head.pt").unlink()
    with pytest.raises(mf.ManifestError, match=r"heads/head\.pt is listed but missing"):
        mf.verify_directory(signed_dir, [old_key[1]], require_signature=True)


def test_directory_is_refused_when_the_signature_is_missing_and_required(
    signed_dir: Path, old_key: tuple[bytes, bytes]
) -> None:
    (signed_dir / mf.SIGNATURE_NAME).unlink()
    with pytest.raises(mf.ManifestError, match=r"MANIFEST\.json\.sig is missing .*signatures are required"):
        mf.verify_directory(signed_dir, [old_key[1]], require_signature=True)


def test_unsigned_directory_verifies_when_signatures_are_not_required(
    weights_dir: Path, old_key: tuple[bytes, bytes]
) -> None:
    mf.write_manifest(weights_dir)
    assert len(mf.verify_directory(weights_dir, [old_key[1]], require_signature=False)) == 2
    assert len(mf.verify_directory(weights_dir, [], require_signature=False)) == 2


def test_unsigned_directory_is_still_refused_when_a_byte_flips_and_signatures_are_not_required(
    weights_dir: Path,
) -> None:
    mf.write_manifest(weights_dir)
    _flip_byte(weights_dir / "model.safetensors")
    with pytest.raises(mf.ManifestError, match=r"model\.safetensors has sha256"):
        mf.verify_directory(weights_dir, [], require_signature=False)


def test_directory_is_refused_when_signed_by_a_key_that_is_not_configured(
    signed_dir: Path, new_key: tuple[bytes, bytes]
) -> None:
    with pytest.raises(mf.ManifestError, match=r"does not verify under any configured public key"):
        mf.verify_directory(signed_dir, [new_key[1]], require_signature=True)


def test_directory_is_refused_when_require_signature_has_no_public_key(signed_dir: Path) -> None:
    with pytest.raises(mf.ManifestKeyError, match="no public key is configured"):
        mf.verify_directory(signed_dir, [], require_signature=True)


def test_old_signature_verifies_when_old_and_new_public_keys_are_configured_during_rotation(
    signed_dir: Path, old_key: tuple[bytes, bytes], new_key: tuple[bytes, bytes]
) -> None:
    assert len(mf.verify_directory(signed_dir, [new_key[1], old_key[1]], require_signature=True)) == 2


def test_resigned_manifest_verifies_with_only_the_new_key_when_rotation_completes(
    signed_dir: Path, old_key: tuple[bytes, bytes], new_key: tuple[bytes, bytes]
) -> None:
    manifest_before = (signed_dir / mf.MANIFEST_NAME).read_bytes()
    mf.sign_manifest(signed_dir, new_key[0])
    assert (signed_dir / mf.MANIFEST_NAME).read_bytes() == manifest_before  # only the signature changes
    assert len(mf.verify_directory(signed_dir, [new_key[1]], require_signature=True)) == 2
    with pytest.raises(mf.ManifestError, match="does not verify"):
        mf.verify_directory(signed_dir, [old_key[1]], require_signature=True)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "not JSON"),
        ('{"version": 2, "files": {}}', "version 2"),
        ('{"version": true, "files": {}}', "version True"),
        ('{"version": 1, "files": {}, "extra": 1}', "exactly the keys"),
        ('{"version": 1, "files": []}', "'files' is not an object"),
        ('{"version": 1, "files": {"model.safetensors": "ABC"}}', "sha256 of model.safetensors"),
        ('{"version": 1, "files": {"../model.safetensors": "' + "0" * 64 + '"}}', "not a relative path"),
        ('{"version": 1, "files": {"/etc/model.pt": "' + "0" * 64 + '"}}', "not a relative path"),
        ('{"version": 1, "version": 1, "files": {}}', "duplicate key"),
    ],
)
def test_malformed_manifest_is_refused_naming_the_manifest(weights_dir: Path, text: str, why: str) -> None:
    (weights_dir / mf.MANIFEST_NAME).write_text(text)
    with pytest.raises(mf.ManifestError, match=rf"MANIFEST\.json in .* is malformed: .*{why}"):
        mf.verify_directory(weights_dir, [], require_signature=False)


def test_missing_manifest_is_refused_naming_the_manifest(weights_dir: Path, old_key: tuple[bytes, bytes]) -> None:
    with pytest.raises(mf.ManifestError, match=r"MANIFEST\.json is missing"):
        mf.verify_directory(weights_dir, [old_key[1]], require_signature=False)


@pytest.mark.parametrize("content", [b"", b"not base64!", base64.b64encode(b"short")])
def test_signature_is_refused_when_it_is_not_a_base64_ed25519_signature(
    signed_dir: Path, old_key: tuple[bytes, bytes], content: bytes
) -> None:
    (signed_dir / mf.SIGNATURE_NAME).write_bytes(content)
    with pytest.raises(mf.ManifestError, match=r"MANIFEST\.json\.sig .* is not a base64 Ed25519 signature"):
        mf.verify_directory(signed_dir, [old_key[1]], require_signature=True)


def test_directory_is_refused_when_it_holds_a_symlink_to_a_directory(
    signed_dir: Path, old_key: tuple[bytes, bytes], tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.safetensors").write_bytes(b"x")
    (signed_dir / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(mf.ManifestError, match=r"linked in .* is a symbolic link to a directory"):
        mf.verify_directory(signed_dir, [old_key[1]], require_signature=True)


def test_directory_is_refused_when_a_subdirectory_cannot_be_listed(
    signed_dir: Path, old_key: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A searchable but unlistable directory (mode 0111) could hold a file loadable by name yet
    # unseen by the walk. Simulated, since tests may run as root, who lists anything.
    hidden = signed_dir / "hidden"
    hidden.mkdir()
    real_scandir = os.scandir

    def scandir(path: str) -> Iterator[os.DirEntry[str]]:
        if Path(path) == hidden:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(mf.ManifestError, match="cannot list hidden"):
        mf.verify_directory(signed_dir, [old_key[1]], require_signature=True)


def test_each_file_is_hashed_once_and_compared_in_constant_time_when_verifying(
    signed_dir: Path, old_key: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[Path] = []
    compared: list[str] = []
    real_hash, real_compare = mf.sha256_file, mf.hmac.compare_digest

    def counting_hash(path: Path) -> str:
        hashed.append(path)
        return real_hash(path)

    def counting_compare(a: str, b: str) -> bool:
        compared.append(a)
        return real_compare(a, b)

    monkeypatch.setattr(mf, "sha256_file", counting_hash)
    monkeypatch.setattr(mf.hmac, "compare_digest", counting_compare)
    mf.verify_directory(signed_dir, [old_key[1]], require_signature=True)
    assert sorted(p.relative_to(signed_dir).as_posix() for p in hashed) == ["heads/head.pt", "model.safetensors"]
    assert len(compared) == 2


def test_public_key_is_refused_when_it_is_not_ed25519(signed_dir: Path) -> None:
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(mf.ManifestKeyError, match=r"public key #1 is a .*not an Ed25519 public key"):
        mf.verify_directory(signed_dir, [ec_pem], require_signature=True)
    with pytest.raises(mf.ManifestKeyError, match="public key #1 is not a PEM public key"):
        mf.verify_directory(signed_dir, [b"garbage"], require_signature=True)


def test_signing_key_is_refused_without_quoting_it_when_it_is_not_a_private_key(weights_dir: Path) -> None:
    mf.write_manifest(weights_dir)
    with pytest.raises(mf.ManifestKeyError, match="not an unencrypted PEM private key") as info:
        mf.sign_manifest(weights_dir, b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    assert "c2VjcmV0" not in str(info.value)


def test_manifest_is_not_written_when_the_directory_has_no_weight_files(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(mf.ManifestError, match="no weight files"):
        mf.write_manifest(tmp_path)
    assert not (tmp_path / mf.MANIFEST_NAME).exists()


def test_cli_keygen_sign_and_verify_round_trip_when_nothing_changed(
    weights_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = tmp_path / "signing.pem", tmp_path / "signing.pub"
    assert mf.main(["keygen", "--private", str(private), "--public", str(public)]) == mf.EXIT_OK
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert mf.main(["sign", str(weights_dir), "--key", str(private)]) == mf.EXIT_OK
    assert (weights_dir / mf.SIGNATURE_NAME).is_file()
    args = ["verify", str(weights_dir), "--public-key", str(public), "--require-signature"]
    assert mf.main(args) == mf.EXIT_OK
    assert "2 files match MANIFEST.json (signature verified)" in capsys.readouterr().out

    _flip_byte(weights_dir / "model.safetensors")
    assert mf.main(args) == mf.EXIT_FAILED
    err = capsys.readouterr().err
    assert "verification failed" in err
    assert "model.safetensors" in err


def test_cli_verify_accepts_several_public_keys_when_rotating(
    signed_dir: Path, tmp_path: Path, old_key: tuple[bytes, bytes], new_key: tuple[bytes, bytes]
) -> None:
    old_pub, new_pub = tmp_path / "old.pub", tmp_path / "new.pub"
    old_pub.write_bytes(old_key[1])
    new_pub.write_bytes(new_key[1])
    args = ["verify", str(signed_dir), "--public-key", str(new_pub), "--public-key", str(old_pub)]
    assert mf.main([*args, "--require-signature"]) == mf.EXIT_OK


def test_cli_keygen_refuses_to_overwrite_a_key_when_the_file_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private = tmp_path / "signing.pem"
    private.write_bytes(b"keep me")
    assert mf.main(["keygen", "--private", str(private), "--public", str(tmp_path / "p.pub")]) == mf.EXIT_USAGE
    assert private.read_bytes() == b"keep me"
    assert "refusing to overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["sign", "somewhere"],
        ["verify", "/nonexistent/weights"],
        ["keygen", "--private", "x.pem"],
    ],
)
def test_cli_exits_with_the_usage_status_when_arguments_are_bad(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert mf.main(argv) == mf.EXIT_USAGE
    assert capsys.readouterr().err


def test_cli_verify_exits_with_the_usage_status_when_a_signature_is_required_without_keys(
    signed_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert mf.main(["verify", str(signed_dir), "--require-signature"]) == mf.EXIT_USAGE
    assert "--public-key" in capsys.readouterr().err


def test_cli_verify_exits_with_the_usage_status_when_a_public_key_file_is_unusable(
    signed_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_bytes(b"garbage")
    assert mf.main(["verify", str(signed_dir), "--public-key", str(bad)]) == mf.EXIT_USAGE
    assert "bad.pub is not a PEM public key" in capsys.readouterr().err


@pytest.mark.slow  # a new Python process importing torch: seconds
def test_manifest_module_refuses_an_added_file_naming_it_when_run_as_a_program(
    signed_dir: Path, tmp_path: Path, old_key: tuple[bytes, bytes]
) -> None:
    public = tmp_path / "signing.pub"
    public.write_bytes(old_key[1])
    (signed_dir / "implant.pt").write_bytes(b"not listed")
    argv = ["verify", str(signed_dir), "--public-key", str(public), "--require-signature"]
    result = subprocess.run(
        [sys.executable, "-m", "models.manifest", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == mf.EXIT_FAILED
    assert "implant.pt is not listed" in result.stderr
    assert result.stdout == ""
