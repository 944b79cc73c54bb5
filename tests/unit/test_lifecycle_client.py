"""The client's side of training and the model lifecycle, without a server: packing a folder into
the archive `POST /v1/datasets` takes, the Server-Sent Events parser, and the streaming, retrying
and reconnecting the client does on the wire (seen through httpx.MockTransport). The same calls
against the real server are in tests/integration/test_lifecycle_cli.py."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from contract.lifecycle import TrainingJob
from maas.archive import ARCHIVE_TYPES, ArchiveError, archive_type, folder_members, open_archive, pack_folder
from maas.client import ApiError, AsyncVisionClient, JobEvent, RetryPolicy, VisionClient
from maas.sse import EventParser, ServerSentEvent, parse_events

JOB_ID = "job-1"
DATASET = {"id": "0123456789abcdef", "classes": {"a": 2, "b": 1}, "images": 3, "rejected": [], "created": 1.0}


def job(status: str = "running", epoch: int = 1, **extra: Any) -> dict[str, Any]:
    """A TrainingJob as the API shapes it."""
    request = {"name": "shapes", "base_model": "digits_cnn", "dataset": DATASET["id"]}
    progress = {"epoch": epoch, "epochs": 3, "step": 10 * epoch, "loss": 1.0 / epoch, "elapsed_s": 2.0 * epoch}
    return {"id": JOB_ID, "status": status, "request": request, "progress": progress, "created": 1.0, **extra}


def sse(*events: tuple[str, dict[str, Any]], comment: bool = False) -> bytes:
    """An event stream body: each (event, data) as the server frames it."""
    text = ": keep-alive\n\n" if comment else ""
    text += "".join(f"event: {name}\nid: {i}\ndata: {json.dumps(data)}\n\n" for i, (name, data) in enumerate(events))
    return text.encode()


@pytest.fixture
def dataset_folder(tmp_path: Path) -> Path:
    """Two labels, three files, and what packing leaves out: hidden files and folders."""
    root = tmp_path / "shapes"
    for name, data in (("b/x.png", b"\x89PNG-b"), ("a/2.png", b"\x89PNG-2"), ("a/1.txt", b"t" * 1000)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / ".DS_Store").write_bytes(b"finder")
    (root / "a" / ".hidden.png").write_bytes(b"x")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    return root


def recording(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[list[httpx.Request], httpx.MockTransport]:
    """A transport answering with `handler`, and the list of requests it saw (bodies read)."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return handler(request)

    return seen, httpx.MockTransport(record)


def no_sleep() -> RetryPolicy:
    return RetryPolicy(sleep=lambda _: None)


def archive_part(request: httpx.Request) -> tuple[str | None, str, bytes]:
    """The multipart body's one part: (file name, media type, bytes)."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + request.content)
    (part,) = message.iter_parts()
    assert part.get_param("name", header="content-disposition") == "archive"
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return part.get_filename(), part.get_content_type(), payload


# ---- packing -------------------------------------------------------------------------------


def test_folder_packs_to_the_same_zip_bytes_every_time_with_label_folders_kept(dataset_folder: Path) -> None:
    """Sorted members named label/file, one timestamp: same folder, same bytes (and same data set id)."""
    first, again = io.BytesIO(), io.BytesIO()
    assert pack_folder(dataset_folder, first) == 3
    (dataset_folder / "b" / "x.png").touch()  # a newer modification time changes nothing
    pack_folder(dataset_folder, again)
    assert first.getvalue() == again.getvalue()
    with zipfile.ZipFile(first) as packed:
        assert packed.namelist() == ["a/1.txt", "a/2.png", "b/x.png"]
        assert packed.read("a/2.png") == b"\x89PNG-2"
        kinds = {info.filename: info.compress_type for info in packed.infolist()}
        assert kinds == {"a/1.txt": zipfile.ZIP_DEFLATED, "a/2.png": zipfile.ZIP_STORED, "b/x.png": zipfile.ZIP_STORED}
        assert {info.date_time for info in packed.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_packing_reports_each_file_and_leaves_out_hidden_ones(dataset_folder: Path) -> None:
    calls: list[tuple[int, int]] = []
    pack_folder(dataset_folder, io.BytesIO(), lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert [name for _, name in folder_members(dataset_folder)] == ["a/1.txt", "a/2.png", "b/x.png"]


def test_an_empty_folder_or_a_file_that_is_no_archive_is_refused_before_sending(tmp_path: Path) -> None:
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("no")
    for path, words in ((tmp_path / "empty", "holds no files"), (tmp_path / "notes.txt", "neither a folder")):
        with pytest.raises(ArchiveError, match=words), open_archive(path):
            pass


@pytest.mark.parametrize(("name", "kind"), [*((f"set{suffix}", t) for suffix, t in ARCHIVE_TYPES.items())])
def test_archive_files_are_sent_as_they_are_with_their_media_type(tmp_path: Path, name: str, kind: str) -> None:
    path = tmp_path / name.upper()  # the name's case does not matter
    path.write_bytes(b"archive bytes")
    assert archive_type(path) == kind
    with open_archive(path) as archive:
        assert (archive.name, archive.media_type, archive.size, archive.file.read()) == (
            path.name,
            kind,
            13,
            b"archive bytes",
        )


# ---- Server-Sent Events ------------------------------------------------------------------------


def test_events_are_parsed_as_the_standard_says() -> None:
    """Multi-line data, one optional space, comments, ids kept, retry read, unknown fields ignored."""
    lines = [
        ": a comment",
        "event: progress",
        "data: first",
        "data:  two spaces keep one",
        "data",
        "id: 7",
        "retry: 1500",
        "retry: soon",
        "colour: blue",
        "",
        "",  # a blank line with no data dispatches nothing
        "data: no type",
        "",
        "event: done",
        "data: left without its blank line",
    ]
    assert list(parse_events(lines)) == [
        ServerSentEvent("progress", "first\n two spaces keep one\n", "7", 1500),
        ServerSentEvent("message", "no type", "7", 1500),
    ]


def test_an_event_type_without_data_is_forgotten_at_the_blank_line() -> None:
    parser = EventParser()
    assert [parser.feed(line) for line in ("event: done", "", "data: x", "")] == [
        None,
        None,
        None,
        ServerSentEvent("message", "x", ""),
    ]


# ---- the wire ------------------------------------------------------------------------------------


def test_upload_streams_the_packed_folder_as_the_archive_part_and_reports_bytes(dataset_folder: Path) -> None:
    sent: list[tuple[int, int]] = []
    seen, transport = recording(lambda _: httpx.Response(201, json=DATASET))
    with VisionClient("http://maas.test", transport=transport) as client:
        dataset = client.upload_dataset(dataset_folder, progress=lambda done, total: sent.append((done, total)))
    assert dataset.id == DATASET["id"]
    (request,) = seen
    assert (request.method, request.url.path) == ("POST", "/v1/datasets")
    name, kind, body = archive_part(request)
    assert (name, kind) == ("shapes.zip", "application/zip")
    packed = io.BytesIO()
    pack_folder(dataset_folder, packed)
    assert body == packed.getvalue()
    assert sent[-1] == (len(body), len(body))
    assert int(request.headers["content-length"]) == len(request.content)  # streamed, with its length known


def test_async_upload_streams_the_same_archive(dataset_folder: Path) -> None:
    seen, transport = recording(lambda _: httpx.Response(201, json=DATASET))

    async def upload() -> None:
        async with AsyncVisionClient("http://maas.test", transport=transport) as client:
            await client.upload_dataset(dataset_folder, progress=lambda done, total: None)

    asyncio.run(upload())
    packed = io.BytesIO()
    pack_folder(dataset_folder, packed)
    assert archive_part(seen[0]) == ("shapes.zip", "application/zip", packed.getvalue())


def test_upload_is_sent_again_whole_when_the_server_is_overloaded(tmp_path: Path) -> None:
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("a/1.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"png"))
    answers = iter([httpx.Response(503, headers={"Retry-After": "0"}), httpx.Response(201, json=DATASET)])
    sent: list[tuple[int, int]] = []
    seen, transport = recording(lambda _: next(answers))
    with VisionClient("http://maas.test", retry=no_sleep(), transport=transport) as client:
        client.upload_dataset(archive, progress=lambda done, total: sent.append((done, total)))
    bodies = [archive_part(request) for request in seen]
    assert bodies[0] == bodies[1] == ("set.tar.gz", "application/gzip", archive.read_bytes())
    size = archive.stat().st_size
    assert sent.count((size, size)) == 2  # the progress starts again with the second attempt


def test_training_fields_are_checked_against_the_contract_before_anything_is_sent() -> None:
    seen, transport = recording(lambda _: httpx.Response(202, json=job("queued")))
    with VisionClient("http://maas.test", transport=transport) as client:
        with pytest.raises(ValidationError, match="epochs"):
            client.train(name="shapes", base_model="digits_cnn", dataset=DATASET["id"], epochs=0)
        assert seen == []
        queued = client.train(name="shapes", base_model="digits_cnn", dataset=DATASET["id"], epochs=2)
    assert queued.status == "queued"
    sent = json.loads(seen[0].content)
    assert (seen[0].url.path, sent["epochs"], sent["learning_rate"]) == ("/v1/training/jobs", 2, 1e-3)


def test_an_answer_that_is_not_the_contracts_shape_is_an_invalid_response() -> None:
    _, transport = recording(lambda _: httpx.Response(200, json={"datasets": [{"id": "nope"}]}))
    with VisionClient("http://maas.test", transport=transport) as client, pytest.raises(ApiError) as caught:
        client.datasets()
    assert caught.value.code == "invalid_response"
    assert "DatasetList" in caught.value.message


def stream_server(bodies: list[bytes | httpx.Response | Exception]) -> tuple[list[httpx.Request], httpx.MockTransport]:
    """Answers each connection to the events route with the next body (an event stream), response or error."""
    answers: Iterator[bytes | httpx.Response | Exception] = iter(bodies)

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/v1/training/jobs/{JOB_ID}/events"
        body = next(answers)
        if isinstance(body, Exception):
            raise body
        if isinstance(body, httpx.Response):
            return body
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body)

    return recording(answer)


def follow_sync(transport: httpx.MockTransport) -> list[JobEvent]:
    with VisionClient("http://maas.test", retry=no_sleep(), transport=transport) as client:
        return list(client.follow_job(JOB_ID))


def follow_async(transport: httpx.MockTransport) -> list[JobEvent]:
    async def run() -> list[JobEvent]:
        async with AsyncVisionClient(
            "http://maas.test", retry=RetryPolicy(async_sleep=_no_wait), transport=transport
        ) as c:
            return [event async for event in c.follow_job(JOB_ID)]

    return asyncio.run(run())


async def _no_wait(_: float) -> None:
    return None


FOLLOWERS = pytest.mark.parametrize("follow", [follow_sync, follow_async], ids=["sync", "async"])


@FOLLOWERS
def test_follow_yields_each_change_then_done_and_ends(follow: Callable[[httpx.MockTransport], list[JobEvent]]) -> None:
    body = sse(("progress", job(epoch=1)), ("progress", job(epoch=1)), ("progress", job(epoch=2)), comment=True)
    body += sse(("done", job("succeeded", epoch=3, version="0123456789ab")))
    body += b"event: progress\ndata: {}\n\n"  # after done: never read
    seen, transport = stream_server([body])
    events = follow(transport)
    assert [(e.event, e.job.status, e.job.progress and e.job.progress.epoch) for e in events] == [
        ("progress", "running", 1),
        ("progress", "running", 2),
        ("done", "succeeded", 3),
    ]
    assert isinstance(events[-1].job, TrainingJob)
    assert events[-1].job.version == "0123456789ab"
    assert seen[0].headers["accept"] == "text/event-stream"


@FOLLOWERS
def test_follow_reconnects_with_the_last_event_id_when_the_stream_drops_or_goes_quiet(
    follow: Callable[[httpx.MockTransport], list[JobEvent]],
) -> None:
    """A stream ending early, a read timeout and a 503 are reconnected; the repeated state is not yielded twice."""
    seen, transport = stream_server(
        [
            sse(("progress", job(epoch=1))),
            httpx.ReadTimeout("quiet"),
            httpx.Response(503, headers={"Retry-After": "0"}),
            sse(("progress", job(epoch=1)), ("done", job("succeeded", epoch=3))),
        ]
    )
    assert [(e.event, e.job.status) for e in follow(transport)] == [("progress", "running"), ("done", "succeeded")]
    assert len(seen) == 4
    assert "last-event-id" not in seen[0].headers
    assert [request.headers["last-event-id"] for request in seen[1:]] == ["0", "0", "0"]


@FOLLOWERS
def test_follow_gives_up_after_the_policys_attempts_when_the_stream_never_says_done(
    follow: Callable[[httpx.MockTransport], list[JobEvent]],
) -> None:
    seen, transport = stream_server([b": nothing\n\n"] * 5)
    with pytest.raises(ApiError) as caught:
        follow(transport)
    assert caught.value.code == "stream_ended"
    assert len(seen) == 5  # RetryPolicy().max_attempts


@FOLLOWERS
def test_follow_raises_the_servers_error_when_the_job_is_unknown(
    follow: Callable[[httpx.MockTransport], list[JobEvent]],
) -> None:
    missing = httpx.Response(404, json={"error": {"code": "not_found", "message": "no job job-1"}})
    seen, transport = stream_server([missing])
    with pytest.raises(ApiError) as caught:
        follow(transport)
    assert (caught.value.status, caught.value.code, len(seen)) == (404, "not_found", 1)


def test_lifecycle_routes_are_the_documented_ones() -> None:
    """Each method's method and path, as the API lists them."""
    seen, transport = recording(lambda request: httpx.Response(200 if request.method != "DELETE" else 204, json={}))
    invalid: list[str] = []
    with VisionClient("http://maas.test", transport=transport) as client:
        for call in (
            lambda: client.dataset("d/1"),
            lambda: client.delete_dataset("d1"),
            lambda: client.job("j1"),
            lambda: client.jobs(),
            lambda: client.cancel_job("j1"),
            lambda: client.versions("shapes"),
            lambda: client.rollout_state("shapes"),
            lambda: client.rollout("shapes", "0123456789ab", 20),
            lambda: client.rollback("shapes"),
            lambda: client.predict("shapes", b"\x89PNG-x", version="0123456789ab"),
        ):
            try:
                call()
            except ApiError as exc:  # {} is no shape: only the requests are checked here
                invalid.append(exc.code)
    assert set(invalid) == {"invalid_response"}
    assert [(r.method, r.url.raw_path.decode()) for r in seen] == [
        ("GET", "/v1/datasets/d%2F1"),
        ("DELETE", "/v1/datasets/d1"),
        ("GET", "/v1/training/jobs/j1"),
        ("GET", "/v1/training/jobs"),
        ("DELETE", "/v1/training/jobs/j1"),
        ("GET", "/v1/models/shapes/versions"),
        ("GET", "/v1/models/shapes/rollout"),
        ("POST", "/v1/models/shapes/rollout"),
        ("POST", "/v1/models/shapes/rollback"),
        ("POST", "/v1/models/shapes/versions/0123456789ab:predict"),
    ]
    assert json.loads(seen[7].content) == {"version": "0123456789ab", "percent": 20}
