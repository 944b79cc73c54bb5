"""Weights encrypted at rest: load only with the right key, refuse tampering, rotate, never leak keys."""

from __future__ import annotations

import base64
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from safetensors.torch import save_file
from torch import nn

from models import crypto
from models import weights as wsrc

REPO_ROOT = Path(__file__).resolve().parents[2]
OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
OTHER_KEY = bytes(range(200, 232))


def _env(**keys: bytes) -> str:
    return ",".join(crypto.format_key(key_id, key) for key_id, key in keys.items())


def _secrets(*keys: bytes) -> list[str]:
    """Every form a key could leak in: base64 (as configured), raw bytes' repr, hex."""
    return [form for key in keys for form in (base64.b64encode(key).decode(), repr(key)[2:-1], key.hex())]


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    """The state dict of a small real module (about 10 KB of float32 weights)."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return {k: v.contiguous() for k, v in module.state_dict().items()}


@pytest.fixture
def plain(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    """`state` saved as safetensors."""
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    return path


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """$VISION_MAAS_WEIGHTS_KEYS holding the key k1, as a Kubernetes Secret exposed as env would."""
    monkeypatch.setenv(crypto.KEYS_ENV, _env(k1=OLD_KEY))
    return crypto.load_keys()


@pytest.fixture
def encrypted(plain: Path, keyed: dict[str, bytes]) -> Path:
    """`plain` encrypted under k1 beside it as model.safetensors.enc."""
    return crypto.encrypt_file(plain, plain.with_name("model.safetensors.enc"), "k1", keyed)


def _assert_equal_states(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_encrypted_safetensors_load_and_equal_the_originals_when_the_key_is_configured(
    encrypted: Path, state: dict[str, torch.Tensor]
) -> None:
    _assert_equal_states(wsrc.load_state_dict_file(encrypted, wsrc.sha256_file(encrypted)), state)


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_encrypted_weights_only_torch_file_loads_when_the_key_is_configured(
    tmp_path: Path, state: dict[str, torch.Tensor], keyed: dict[str, bytes], suffix: str
) -> None:
    plain = tmp_path / f"model{suffix}"
    torch.save(state, plain)
    encrypted = crypto.encrypt_file(plain, tmp_path / f"model{suffix}.enc", None, keyed)
    _assert_equal_states(wsrc.load_state_dict_file(encrypted, None), state)


def test_encrypted_file_contains_no_run_of_the_plaintext(plain: Path, encrypted: Path) -> None:
    plaintext, ciphertext = plain.read_bytes(), encrypted.read_bytes()
    assert len(plaintext) > 8000
    assert plaintext[:64] not in ciphertext
    # Nor any 32-byte stretch of the header or the tensor data.
    assert not [i for i in range(0, len(plaintext) - 32, 32) if plaintext[i : i + 32] in ciphertext]


def test_encrypted_file_has_the_documented_format_when_written(plain: Path, encrypted: Path) -> None:
    data = encrypted.read_bytes()
    header = b"VMENC1" + bytes([2]) + b"k1"
    assert data.startswith(header)
    nonce, body = data[len(header) : len(header) + 12], data[len(header) + 12 :]
    assert AESGCM(OLD_KEY).decrypt(nonce, body, header) == plain.read_bytes()


def test_the_same_weights_encrypt_to_different_bytes_each_time(plain: Path, keyed: dict[str, bytes]) -> None:
    first = crypto.encrypt_file(plain, plain.with_name("a.safetensors.enc"), "k1", keyed).read_bytes()
    second = crypto.encrypt_file(plain, plain.with_name("b.safetensors.enc"), "k1", keyed).read_bytes()
    assert first != second  # a fresh random nonce per file


def test_decrypted_weights_are_never_written_to_disk_when_loading(encrypted: Path, plain: Path) -> None:
    plain.unlink()
    before = sorted(p.name for p in encrypted.parent.iterdir())
    wsrc.load_state_dict_file(encrypted, None)
    assert sorted(p.name for p in encrypted.parent.iterdir()) == before == ["model.safetensors.enc"]


def test_encrypted_file_is_refused_naming_the_file_and_key_id_when_no_key_is_configured(
    encrypted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(crypto.KEYS_ENV)
    with pytest.raises(
        crypto.DecryptionError, match=r"model\.safetensors\.enc is encrypted with key id 'k1', which is not configured"
    ) as info:
        wsrc.load_state_dict_file(encrypted, None)
    assert isinstance(info.value, wsrc.WeightsIntegrityError)


def test_encrypted_file_is_refused_without_key_material_when_the_key_under_its_id_is_wrong(
    encrypted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(crypto.KEYS_ENV, _env(k1=OTHER_KEY))
    with pytest.raises(
        crypto.DecryptionError, match=r"model\.safetensors\.enc does not decrypt with key id 'k1'"
    ) as info:
        wsrc.load_state_dict_file(encrypted, None)
    message = str(info.value)
    assert not [secret for secret in _secrets(OLD_KEY, OTHER_KEY) if secret in message]


@pytest.mark.parametrize(
    ("where", "offset"),
    [("nonce", 10), ("ciphertext", 500), ("ciphertext", -100), ("tag", -1)],
)
def test_encrypted_file_is_refused_when_its_bytes_are_tampered_with(encrypted: Path, where: str, offset: int) -> None:
    data = bytearray(encrypted.read_bytes())
    data[offset] ^= 0x01
    encrypted.write_bytes(bytes(data))
    with pytest.raises(crypto.DecryptionError, match=r"model\.safetensors\.enc does not decrypt .*altered"):
        wsrc.load_state_dict_file(encrypted, None)


def test_encrypted_file_is_refused_when_its_header_names_another_configured_key(
    encrypted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The header is associated data: renaming the key breaks the tag even where the other id holds
    # the very same key bytes (only the header binding can catch that).
    monkeypatch.setenv(crypto.KEYS_ENV, _env(k1=OLD_KEY, k2=OLD_KEY))
    encrypted.write_bytes(encrypted.read_bytes().replace(b"VMENC1\x02k1", b"VMENC1\x02k2", 1))
    with pytest.raises(crypto.DecryptionError, match="does not decrypt with key id 'k2'") as info:
        wsrc.load_state_dict_file(encrypted, None)
    assert not [secret for secret in _secrets(OLD_KEY) if secret in str(info.value)]


def test_encrypted_file_is_refused_when_its_header_names_an_unknown_key(encrypted: Path) -> None:
    encrypted.write_bytes(encrypted.read_bytes().replace(b"VMENC1\x02k1", b"VMENC1\x02kx", 1))
    with pytest.raises(crypto.DecryptionError, match=r"key id 'kx', which is not configured \(.* has k1\)"):
        wsrc.load_state_dict_file(encrypted, None)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "not an encrypted weights file"),
        (b"PK\x03\x04 plain bytes", "not an encrypted weights file"),
        (b"VMENC1\x00", "malformed encryption header"),
        (b"VMENC1\x05k1", "malformed encryption header"),
        (b"VMENC1\x02k\xff" + bytes(40), "malformed encryption header"),
        (b"VMENC1\x02k1" + bytes(20), "truncated"),
    ],
)
def test_file_is_refused_naming_it_when_it_is_not_in_the_encrypted_format(
    tmp_path: Path, keyed: dict[str, bytes], content: bytes, why: str
) -> None:
    path = tmp_path / "model.safetensors.enc"
    path.write_bytes(content)
    with pytest.raises(crypto.DecryptionError, match=rf"model\.safetensors\.enc .*{why}"):
        wsrc.load_state_dict_file(path, None)


def test_sha256_pin_applies_to_the_encrypted_bytes_when_loading(plain: Path, encrypted: Path) -> None:
    with pytest.raises(wsrc.WeightsIntegrityError, match=r"model\.safetensors\.enc has sha256"):
        wsrc.load_state_dict_file(encrypted, wsrc.sha256_file(plain))
    assert wsrc.load_state_dict_file(encrypted, wsrc.sha256_file(encrypted).upper())


def test_encrypted_file_of_an_unknown_format_is_refused_before_decrypting(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx.enc"
    path.write_bytes(b"VMENC1")
    with pytest.raises(wsrc.WeightsError, match=r"model\.onnx\.enc: use \.safetensors"):
        wsrc.load_state_dict_file(path, None)


def test_decrypted_pickle_with_code_is_still_refused(tmp_path: Path, keyed: dict[str, bytes]) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str, ...]]:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "weights.pt.enc"
    path.write_bytes(crypto.encrypt_bytes(pickle.dumps({"fc.weight": Exploit()}), "k1", keyed))
    with pytest.raises(wsrc.WeightsIntegrityError, match="refused"):
        wsrc.load_state_dict_file(path, None)
    assert not marker.exists()


def test_decrypted_garbage_is_refused_as_invalid_safetensors(tmp_path: Path, keyed: dict[str, bytes]) -> None:
    path = tmp_path / "model.safetensors.enc"
    path.write_bytes(crypto.encrypt_bytes(b"not safetensors at all", "k1", keyed))
    with pytest.raises(wsrc.WeightsIntegrityError, match=r"model\.safetensors\.enc is not valid safetensors"):
        wsrc.load_state_dict_file(path, None)


def test_rotated_file_loads_with_only_the_new_key(
    encrypted: Path, state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    both = crypto.load_keys({crypto.KEYS_ENV: _env(k1=OLD_KEY, k2=NEW_KEY)})
    before = encrypted.read_bytes()
    assert crypto.reencrypt_file(encrypted, "k2", both) == encrypted
    assert crypto.header_key_id(encrypted.read_bytes()) == "k2"
    assert encrypted.read_bytes() != before
    monkeypatch.setenv(crypto.KEYS_ENV, _env(k2=NEW_KEY))
    _assert_equal_states(wsrc.load_state_dict_file(encrypted, None), state)
    monkeypatch.setenv(crypto.KEYS_ENV, _env(k1=OLD_KEY))
    with pytest.raises(crypto.DecryptionError, match="key id 'k2', which is not configured"):
        wsrc.load_state_dict_file(encrypted, None)


def test_rotation_is_refused_and_leaves_the_file_when_the_target_key_is_not_configured(
    encrypted: Path, keyed: dict[str, bytes]
) -> None:
    before = encrypted.read_bytes()
    with pytest.raises(crypto.KeyConfigError, match="key id 'k2' is not configured"):
        crypto.reencrypt_file(encrypted, "k2", keyed)
    assert encrypted.read_bytes() == before


def test_encryption_uses_the_first_configured_key_when_no_key_id_is_given(plain: Path) -> None:
    keys = crypto.load_keys({crypto.KEYS_ENV: _env(k2=NEW_KEY, k1=OLD_KEY)})
    path = crypto.encrypt_file(plain, plain.with_name("model.safetensors.enc"), None, keys)
    assert crypto.header_key_id(path.read_bytes()) == "k2"


def test_encryption_refuses_an_already_encrypted_file_or_its_own_source(
    encrypted: Path, plain: Path, keyed: dict[str, bytes]
) -> None:
    with pytest.raises(wsrc.WeightsError, match="already encrypted"):
        crypto.encrypt_file(encrypted, encrypted.with_name("twice.safetensors.enc"), "k1", keyed)
    with pytest.raises(wsrc.WeightsError, match="must not replace its source"):
        crypto.encrypt_file(plain, plain, "k1", keyed)


def test_keys_load_in_order_when_the_environment_holds_several() -> None:
    value = f" {_env(k1=OLD_KEY)} , {_env(k2=NEW_KEY)},\n"  # a Secret's trailing newline and spaces are fine
    assert crypto.load_keys({crypto.KEYS_ENV: value}) == {"k1": OLD_KEY, "k2": NEW_KEY}
    assert crypto.load_keys({}) == {}
    assert crypto.load_keys({crypto.KEYS_ENV: ""}) == {}


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (base64.b64encode(OLD_KEY).decode(), r"entry 1 is not key_id:base64"),
        (
            "k1:" + base64.b64encode(OLD_KEY).decode()[:-2] + "!!",
            r"entry 1 \(key id 'k1'\): the key is not valid base64",
        ),
        (
            "k1:" + base64.b64encode(OLD_KEY[:16]).decode(),
            r"entry 1 \(key id 'k1'\): the key is 16 bytes; AES-256 needs 32",
        ),
        (f"{_env(k1=OLD_KEY)},{_env(k1=NEW_KEY)}", r"entry 2: key id 'k1' appears more than once"),
        # Swapped order: the "key id" is the key itself, so it must not be echoed.
        (base64.b64encode(OLD_KEY).decode() + ":k1", r"entry 1: a key id must be 1-32 characters"),
        ("k 1:" + base64.b64encode(OLD_KEY).decode(), r"entry 1: a key id must be"),
    ],
)
def test_keys_are_refused_without_key_material_when_the_environment_is_malformed(value: str, why: str) -> None:
    with pytest.raises(crypto.KeyConfigError, match=why) as info:
        crypto.load_keys({crypto.KEYS_ENV: value})
    assert isinstance(info.value, wsrc.WeightsError)
    message = str(info.value)
    assert not [secret for secret in _secrets(OLD_KEY, NEW_KEY, OLD_KEY[:16]) if secret in message]
    assert base64.b64encode(OLD_KEY).decode()[:20] not in message
    # Nor in a chained exception's message (binascii quotes nothing today, but chaining is cut anyway).
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_cli_genkey_encrypt_and_rotate_round_trip(
    plain: Path, state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crypto.main(["genkey", "--id", "k1"]) == crypto.EXIT_OK
    first = capsys.readouterr().out.strip()
    assert crypto.main(["genkey", "--id", "k2"]) == crypto.EXIT_OK
    second = capsys.readouterr().out.strip()
    monkeypatch.setenv(crypto.KEYS_ENV, f"{first},{second}")
    assert list(crypto.load_keys()) == ["k1", "k2"]

    assert crypto.main(["encrypt", str(plain)]) == crypto.EXIT_OK
    encrypted = plain.with_name("model.safetensors.enc")
    assert capsys.readouterr().out == f"{encrypted} sha256:{wsrc.sha256_file(encrypted)} key:k1\n"

    assert crypto.main(["rotate", str(encrypted), "--to", "k2"]) == crypto.EXIT_OK
    out = capsys.readouterr().out
    assert out == f"{encrypted} sha256:{wsrc.sha256_file(encrypted)} key:k2\n"
    monkeypatch.setenv(crypto.KEYS_ENV, second)
    _assert_equal_states(wsrc.load_state_dict_file(encrypted, out.split("sha256:")[1].split()[0]), state)


def test_cli_encrypt_writes_to_out_with_the_named_key(
    plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(crypto.KEYS_ENV, _env(k1=OLD_KEY, k2=NEW_KEY))
    out = tmp_path / "elsewhere.safetensors.enc"
    assert crypto.main(["encrypt", str(plain), "--key-id", "k2", "--out", str(out)]) == crypto.EXIT_OK
    assert crypto.header_key_id(out.read_bytes()) == "k2"
    assert "key:k2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], None, "usage"),
        (["genkey"], None, "--id"),
        (["genkey", "--id", "has space"], None, "--id must be"),
        (["encrypt", "{plain}"], None, "no weights keys are configured"),
        (["encrypt", "{plain}", "--key-id", "k9"], "k1", "key id 'k9' is not configured"),
        (["encrypt", "{plain}", "--out", "{plain}.bak"], "k1", "encrypted weights are named"),
        (["encrypt", "{plain}.enc"], "k1", "already encrypted"),
        (["rotate", "{plain}.enc"], "k1", "--to"),
        (["encrypt", "{plain}"], "bad", "entry 1 is not key_id:base64"),
    ],
)
def test_cli_exits_with_the_usage_status_when_arguments_or_keys_are_bad(
    plain: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: str | None,
    message: str,
) -> None:
    if env == "k1":
        monkeypatch.setenv(crypto.KEYS_ENV, _env(k1=OLD_KEY))
    elif env == "bad":
        monkeypatch.setenv(crypto.KEYS_ENV, base64.b64encode(OLD_KEY).decode())
    else:
        monkeypatch.delenv(crypto.KEYS_ENV, raising=False)
    assert crypto.main([arg.format(plain=plain) for arg in argv]) == crypto.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err
    assert base64.b64encode(OLD_KEY).decode() not in err


def test_cli_rotate_fails_naming_the_file_when_the_current_key_is_wrong(
    encrypted: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(crypto.KEYS_ENV, _env(k1=OTHER_KEY, k2=NEW_KEY))
    before = encrypted.read_bytes()
    assert crypto.main(["rotate", str(encrypted), "--to", "k2"]) == crypto.EXIT_FAILED
    err = capsys.readouterr().err
    assert "model.safetensors.enc does not decrypt with key id 'k1'" in err
    assert not [secret for secret in _secrets(OLD_KEY, OTHER_KEY, NEW_KEY) if secret in err]
    assert encrypted.read_bytes() == before


# A fresh interpreter importing torch: seven seconds, so outside the fast tier.
@pytest.mark.slow
def test_crypto_module_encrypts_with_a_generated_key_when_run_as_a_program(
    plain: Path, state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "models.crypto", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    base = {k: v for k, v in os.environ.items() if k != crypto.KEYS_ENV}
    genkey = run("genkey", "--id", "prod-2024.1", env=base)
    assert genkey.returncode == crypto.EXIT_OK, genkey.stderr
    entry = genkey.stdout.strip()
    encrypt = run("encrypt", str(plain), env={**base, crypto.KEYS_ENV: entry})
    assert encrypt.returncode == crypto.EXIT_OK, encrypt.stderr
    encrypted = plain.with_name("model.safetensors.enc")
    assert encrypt.stdout.strip().endswith(f"sha256:{wsrc.sha256_file(encrypted)} key:prod-2024.1")
    monkeypatch.setenv(crypto.KEYS_ENV, entry)
    _assert_equal_states(wsrc.load_state_dict_file(encrypted, None), state)


def test_encrypted_weights_are_covered_by_a_signed_manifest(
    encrypted: Path, plain: Path, keyed: dict[str, bytes]
) -> None:
    from models import manifest as mf

    plain.unlink()  # ship only the encrypted file
    private, public = mf.generate_keypair()
    mf.write_manifest(encrypted.parent)
    mf.sign_manifest(encrypted.parent, private)
    assert list(mf.verify_directory(encrypted.parent, [public], require_signature=True)) == ["model.safetensors.enc"]
    crypto.reencrypt_file(encrypted, "k1", keyed)  # a re-encryption changes the bytes: re-sign after rotating
    with pytest.raises(mf.ManifestError, match=r"model\.safetensors\.enc has sha256"):
        mf.verify_directory(encrypted.parent, [public], require_signature=True)
