"""The data set routes in-process, without Ray: the catalogue's FastAPI app over a gateway with no
models and a model store in a temporary directory. Every bad archive of the generated corpus
(tests/security/archives.py) gets its documented status and leaves the store as it was."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from contract.errors import ERROR_CODE_HEADER
from contract.lifecycle import Dataset
from deployments.args import AuthArgs, DatasetLimits, LimitsArgs, TrainingArgs
from deployments.auth import hash_key
from deployments.gateway import Gateway
from deployments.rest.app import create_app, lifecycle_routers
from models.images import ImageError, decode_image
from models.training.datasets import load_dataset
from tests.security import archives
from tests.security.archives import LIMITS, ArchiveCase, good_members, image, tar_of, zip_of
from tests.security.corpus import encode, picture

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY, TENANT_KEY = "vmk_" + "a" * 43, "vmk_" + "t" * 43
CASES = archives.generate()


def app_over(
    store: Path, *, limits: DatasetLimits = LIMITS, auth: AuthArgs | None = None, enabled: bool = True
) -> FastAPI:
    training = TrainingArgs(enabled=enabled, store=str(store), datasets=limits)
    gateway = Gateway({}, {}, LimitsArgs(), auth or AuthArgs(enabled=False), None, training)
    return create_app(gateway, lifecycle_routers(gateway))


def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://catalogue") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def upload(app: FastAPI, data: bytes, filename: str = "images.zip", **kwargs: Any) -> httpx.Response:
    return call(app, "POST", "/v1/datasets", files={"archive": (filename, data)}, **kwargs)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for a folder)."""
    return {path.relative_to(root).as_posix(): None if path.is_dir() else path.read_bytes() for path in root.rglob("*")}


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    assert response.headers[ERROR_CODE_HEADER] == code
    assert response.json()["error"]["message"]
    return code


def decoder_message(data: bytes) -> str:
    try:
        decode_image(data)
    except ImageError as exc:
        return str(exc)
    raise AssertionError("the bytes decode")


# ---- good archives ---------------------------------------------------------------------


def test_a_good_archive_is_stored_as_pngs_with_its_bad_files_rejected(tmp_path: Path) -> None:
    """Zipping a folder wraps the labels in it and adds the OS's junk: the wrapper is stripped and
    the junk skipped; a file that does not decode (a broken PNG, an archive in the archive) is
    rejected by name with the decoder's message, and the rest kept, re-encoded."""
    broken = image(7)[:60]
    nested = zip_of(good_members())
    sent = good_members() | {"circle/photo.jpg": encode(picture(24, 16, 5), "JPEG")}
    members = {f"shapes/{name}": data for name, data in sent.items()}
    members |= {
        "shapes/square/broken.png": broken,
        "shapes/square/more.zip": nested,
        "shapes/.DS_Store": b"\0\0\0\1Bud1",
        "shapes/circle/Thumbs.db": b"\xd0\xcf\x11\xe0",
        "__MACOSX/shapes/circle/._0.png": b"\0\5\26\7",
        "shapes/notes.txt": b"drawn by hand",
    }
    app = app_over(tmp_path)
    response = upload(app, zip_of(members))
    assert response.status_code == 201, response.text
    dataset = Dataset.model_validate(response.json())
    assert response.headers["Location"] == f"/v1/datasets/{dataset.id}"
    assert dataset.classes == {"circle": 4, "square": 3}
    assert dataset.images == 7
    assert [(r.file, r.error) for r in dataset.rejected] == [
        ("shapes/notes.txt", "is not in a label folder: images go directly in <label>/"),
        ("shapes/square/broken.png", decoder_message(broken)),
        ("shapes/square/more.zip", decoder_message(nested)),
    ]
    # Stored as the layout says, as PNGs of the pixels (never the bytes sent), and read back by
    # the function training uses.
    directory = tmp_path / "datasets" / dataset.id
    assert Dataset.model_validate_json((directory / "dataset.json").read_bytes()) == dataset
    labels, items = load_dataset(directory)
    assert labels == ["circle", "square"]
    assert [(path.relative_to(directory).as_posix(), index) for path, index in items] == [
        (f"images/{label}/{n}.png", index) for index, label in enumerate(labels) for n in range(dataset.classes[label])
    ]
    for (path, index), name in zip(items, sorted(sent), strict=True):
        assert labels[index] == name.split("/")[0]
        with Image.open(path) as stored:
            assert stored.format == "PNG"
            assert stored.tobytes() == decode_image(sent[name]).tobytes()
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == [dataset.id]


def test_the_same_archive_again_has_the_same_id_and_writes_nothing(tmp_path: Path) -> None:
    app = app_over(tmp_path)
    data = zip_of(good_members())
    first = upload(app, data)
    assert first.status_code == 201
    before = tree(tmp_path)
    again = upload(app, data, filename="renamed.tar")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert "Location" not in again.headers
    assert tree(tmp_path) == before
    other = upload(app, zip_of(good_members(per_class=4)))
    assert other.status_code == 201
    assert other.json()["id"] != first.json()["id"]


def test_concurrent_uploads_of_one_archive_store_it_once(tmp_path: Path) -> None:
    app = app_over(tmp_path)
    data = zip_of(good_members())

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://catalogue") as client:
            post = [client.post("/v1/datasets", files={"archive": ("a.zip", data)}) for _ in range(2)]
            return list(await asyncio.gather(*post))

    responses = asyncio.run(both())
    assert sorted(r.status_code for r in responses) == [200, 201]
    assert responses[0].json() == responses[1].json()
    assert len(list((tmp_path / "datasets").iterdir())) == 1


@pytest.mark.parametrize("compression", ["", "gz"])
def test_tars_are_read_by_content_whatever_their_name(tmp_path: Path, compression: str) -> None:
    """`tar -C folder .` names members ./<label>/<image>; the name the client gives is ignored."""
    members = {f"./{name}": data for name, data in good_members().items()}
    response = upload(app_over(tmp_path), tar_of(members, compression=compression), filename="images.zip")
    assert response.status_code == 201, response.text
    assert response.json()["classes"] == {"circle": 3, "square": 3}
    assert response.json()["rejected"] == []


# ---- bad archives: the corpus ----------------------------------------------------------


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> tuple[FastAPI, Path]:
    """An app over a store that already holds a data set (what a refusal must leave alone)."""
    root = tmp_path_factory.mktemp("store")
    app = app_over(root)
    assert upload(app, zip_of(good_members())).status_code == 201
    return app, root


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_bad_archive_is_refused_whole_and_nothing_is_written(
    case: ArchiveCase, populated: tuple[FastAPI, Path]
) -> None:
    app, root = populated
    before = tree(root)
    response = upload(app, case.data)
    assert response.status_code == case.status, response.text
    assert error_code(response) == case.code
    assert tree(root) == before


def test_the_corpus_covers_every_refusal_as_the_docs_count_it() -> None:
    counts = Counter((c.status, c.code) for c in CASES)
    assert counts == {
        (400, "invalid_archive"): 29,
        (413, "payload_too_large"): 6,
        (415, "unsupported_media_type"): 7,
        (422, "invalid_dataset"): 8,
    }
    megabytes = sum(len(c.data) for c in CASES) / 1e6
    assert f"{len(CASES)} cases ({megabytes:.1f} MB)" in (ROOT / "docs" / "training.md").read_text()
    names = {c.name for c in CASES}
    for kind in ("absolute", "dotdot", "backslash", "symlink", "hardlink", "fifo", "char_device", "duplicate_name"):
        assert any(kind in name for name in names), kind
    for kind in ("too_many_members", "bomb", "expands_over_the_limit", "encrypted", "one_class", "too_few"):
        assert any(kind in name for name in names), kind


def test_an_upload_over_the_size_limit_is_refused_as_it_streams(tmp_path: Path) -> None:
    limits = LIMITS.model_copy(update={"max_archive_bytes": 64 * 1024})
    app = app_over(tmp_path, limits=limits)
    declared = upload(app, bytes(100 * 1024))
    assert (declared.status_code, error_code(declared)) == (413, "payload_too_large")
    # No Content-Length: counted as it arrives, and refused long before the end.
    sent: list[int] = []
    boundary = "b0undary"

    async def body() -> AsyncIterator[bytes]:
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="archive"; filename="a.zip"\r\n\r\n'.encode()
        for _ in range(64):
            sent.append(1)
            yield bytes(16 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    streamed = call(
        app,
        "POST",
        "/v1/datasets",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert (streamed.status_code, error_code(streamed)) == (413, "payload_too_large")
    assert len(sent) < 64
    assert not (tmp_path / "datasets").exists()


def test_the_archive_comes_as_a_file_in_the_multipart_part_named_archive(tmp_path: Path) -> None:
    app = app_over(tmp_path)
    data = zip_of(good_members())
    raw = call(app, "POST", "/v1/datasets", content=data, headers={"Content-Type": "application/zip"})
    assert (raw.status_code, error_code(raw)) == (415, "unsupported_media_type")
    wrong_part = call(app, "POST", "/v1/datasets", files={"file": ("a.zip", data)})
    assert (wrong_part.status_code, error_code(wrong_part)) == (400, "bad_request")
    form = call(app, "POST", "/v1/datasets", data={"archive": "circle/0.png"})
    assert (form.status_code, error_code(form)) == (415, "unsupported_media_type")
    not_a_file = call(app, "POST", "/v1/datasets", files={"archive": (None, "circle/0.png")})
    assert (not_a_file.status_code, error_code(not_a_file)) == (400, "bad_request")
    two = call(app, "POST", "/v1/datasets", files=[("archive", ("a.zip", data)), ("archive", ("b.zip", data))])
    assert (two.status_code, error_code(two)) == (400, "bad_request")
    assert not (tmp_path / "datasets").exists()


def test_an_archive_that_takes_too_long_is_refused_whole(tmp_path: Path) -> None:
    app = app_over(tmp_path, limits=LIMITS.model_copy(update={"max_seconds": 1e-6}))
    response = upload(app, zip_of(good_members()))
    assert (response.status_code, error_code(response)) == (408, "timeout")
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == []


# ---- list, show, delete ----------------------------------------------------------------


def test_data_sets_are_listed_shown_and_deleted(tmp_path: Path) -> None:
    app = app_over(tmp_path)
    assert call(app, "GET", "/v1/datasets").json() == {"datasets": []}
    first = upload(app, zip_of(good_members())).json()
    second = upload(app, tar_of(good_members(per_class=4))).json()
    assert call(app, "GET", "/v1/datasets").json() == {"datasets": [first, second]}
    assert call(app, "GET", f"/v1/datasets/{second['id']}").json() == second
    deleted = call(app, "DELETE", f"/v1/datasets/{first['id']}")
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert call(app, "GET", "/v1/datasets").json() == {"datasets": [second]}
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == [second["id"]]
    for method in ("GET", "DELETE"):
        gone = call(app, method, f"/v1/datasets/{first['id']}")
        assert (gone.status_code, error_code(gone)) == (404, "not_found")


@pytest.mark.parametrize(
    "dataset_id", ["0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "x" * 16, "%2E%2E", "..%5C..%5Ckeys"]
)
def test_ids_outside_the_pattern_are_refused_before_the_store_is_read(tmp_path: Path, dataset_id: str) -> None:
    app = app_over(tmp_path)
    for method in ("GET", "DELETE"):
        response = call(app, method, f"/v1/datasets/{dataset_id}")
        assert (response.status_code, error_code(response)) == (422, "invalid_parameters")


# ---- access ----------------------------------------------------------------------------


def keys(tmp_path: Path) -> AuthArgs:
    store = {
        "tenants": [
            {"name": "ops", "key_sha256": [hash_key(ADMIN_KEY)], "admin": True},
            {"name": "app", "key_sha256": [hash_key(TENANT_KEY)]},
        ]
    }
    (tmp_path / "keys.json").write_text(json.dumps(store))
    return AuthArgs(enabled=True, keys_file=str(tmp_path / "keys.json"))


ROUTES = [("POST", "/v1/datasets"), ("GET", "/v1/datasets"), ("GET", "/v1/datasets/0123456789abcdef")]
ROUTES += [("DELETE", "/v1/datasets/0123456789abcdef")]


def test_only_admin_keys_reach_the_data_sets(tmp_path: Path) -> None:
    store = tmp_path / "store"
    app = app_over(store, auth=keys(tmp_path))
    data = zip_of(good_members())
    for method, path in ROUTES:
        files = {"archive": ("a.zip", data)} if method == "POST" else None
        anonymous = call(app, method, path, files=files)
        assert (anonymous.status_code, error_code(anonymous)) == (401, "unauthorized")
        tenant = call(app, method, path, files=files, headers={"Authorization": f"Bearer {TENANT_KEY}"})
        assert (tenant.status_code, error_code(tenant)) == (403, "forbidden")
    assert not store.exists()
    admin = upload(app, data, headers={"X-API-Key": ADMIN_KEY})
    assert admin.status_code == 201, admin.text


def test_the_routes_are_absent_unless_training_is_enabled(tmp_path: Path) -> None:
    app = app_over(tmp_path, enabled=False)
    for method, path in ROUTES:
        response = call(app, method, path, files={"archive": ("a.zip", b"PK")} if method == "POST" else None)
        assert (response.status_code, error_code(response)) == (404, "not_found")
    assert not any(getattr(route, "path", "").startswith("/v1/datasets") for route in app.routes)
    assert not tmp_path.joinpath("datasets").exists()


def test_a_stored_tar_reads_back_in_order(tmp_path: Path) -> None:
    """load_dataset: sorted labels, each image with its label's index, in the order of the names."""
    members = {f"b/{n}.png": image(n) for n in (2, 0, 1)} | {f"a/{n}.png": image(10 + n) for n in (1, 0, 2)}
    response = upload(app_over(tmp_path), tar_of(members))
    directory = tmp_path / "datasets" / response.json()["id"]
    labels, items = load_dataset(directory)
    assert labels == ["a", "b"]
    for (path, index), name in zip(items, sorted(members), strict=True):
        assert labels[index] == name[0]
        with Image.open(path) as stored, Image.open(io.BytesIO(members[name])) as sent:
            assert stored.convert("RGB").tobytes() == sent.convert("RGB").tobytes()


def test_what_a_killed_upload_left_behind_is_swept_once_stale(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    stale, fresh = datasets / ".incoming-stale", datasets / ".incoming-fresh"
    for leftover in (stale, fresh):
        (leftover / "images").mkdir(parents=True)
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    limits = LIMITS.model_copy(update={"max_seconds": 60.0})
    assert upload(app_over(tmp_path, limits=limits), zip_of(good_members())).status_code == 201
    assert not stale.exists()
    assert fresh.exists()  # an upload may still be writing there


def test_load_dataset_names_a_missing_image(tmp_path: Path) -> None:
    response = upload(app_over(tmp_path), zip_of(good_members()))
    directory = tmp_path / "datasets" / response.json()["id"]
    (directory / "images" / "square" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks 1 of its images, e.g. square/2.png"):
        load_dataset(directory)
