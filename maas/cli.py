"""The `maas` command line: predict, explain, generate, annotate, list models, load-test a server;
upload data sets, train models, follow jobs, list versions, roll them out and back.

Exit status: 0 when every request succeeded, 1 when the server (or the network) refused one,
with the server's error code and message and no traceback, 2 for usage errors.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import click
import httpx
import numpy as np
from PIL import Image, ImageOps
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from contract.lifecycle import FINISHED, Dataset, EvaluationReport, ModelVersion, Rollout, TrainingJob
from contract.params import MAX_SEED
from contract.tasks import Task
from maas.archive import ArchiveError
from maas.client import ApiError, AsyncVisionClient, ParamValue, RetryPolicy, VisionClient, training_request
from maas.draw import BACKGROUND_LABELS, DrawError, annotate_image, decode_png

DEFAULT_URL = "http://127.0.0.1:8000"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
# What video models take besides still images: animated GIF and the containers FFmpeg demuxes.
VIDEO_EXTENSIONS = frozenset({".gif", ".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"})
MAX_BENCH_SECONDS = 600.0
# Statuses that condemn the whole run, not one input: every later request would get the same.
FATAL_STATUSES = frozenset({401, 403, 404, 405, 406, 422})


# ---- settings and errors -------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The global options: where the server is, the API key, the per-request timeout."""

    url: str
    api_key: str | None
    timeout: float

    def client(self) -> VisionClient:
        """A synchronous client with these settings."""
        return VisionClient(self.url, api_key=self.api_key, timeout=self.timeout)


class RequestFailed(click.ClickException):
    """A request the server (or the network) refused: exit status 1, no traceback."""

    exit_code = 1


def describe(error: ApiError) -> str:
    """An API error as one line: code, message and HTTP status."""
    return f"{error.code}: {error.message} (HTTP {error.status})"


class _Commands(click.Group):
    """The command group: turns API and network failures into one-line errors, exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            raise RequestFailed(describe(exc)) from None
        except httpx.HTTPError as exc:
            url = ctx.obj.url if isinstance(ctx.obj, Settings) else "the server"
            raise RequestFailed(f"request to {url} failed: {type(exc).__name__}: {exc}") from None
        except OSError as exc:  # reading an input or writing an output
            raise RequestFailed(str(exc)) from None


# ---- parameters ----------------------------------------------------------------------------


def coerce(value: str) -> ParamValue:
    """A command-line value as JSON would type it: true/false, an int, a finite float, else the string."""
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return value
    # "nan" and "inf" parse as floats, but no parameter means them: keep the text.
    return number if math.isfinite(number) else value


def parse_param(text: str) -> tuple[str, ParamValue]:
    """`key=value` as (key, coerced value); ValueError without a key or an `=`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), coerce(value)


def parse_feature(text: str) -> tuple[str, dict[str, ParamValue]]:
    """`model[:k=v,k=v]` as (model, parameters)."""
    model, _, rest = text.partition(":")
    if not model.strip():
        raise ValueError(f"expected MODEL[:K=V,K=V], got {text!r}")
    params = dict(parse_param(item) for item in rest.split(",") if item.strip())
    return model.strip(), params


class _KeyValue(click.ParamType[tuple[str, ParamValue]]):
    name = "key=value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ParamValue]:
        if isinstance(value, tuple):
            return value  # already converted (a default)
        try:
            return parse_param(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Feature(click.ParamType[tuple[str, dict[str, ParamValue]]]):
    name = "model[:k=v,...]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, dict[str, ParamValue]]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_feature(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


KEY_VALUE = _KeyValue()
FEATURE = _Feature()


# ---- inputs and outputs --------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    """A file to send, and its path relative to what was named (it names its outputs)."""

    path: Path
    relative: PurePath


def expand_inputs(paths: Sequence[Path], extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Input]:
    """Files as given; directories as their files with one of `extensions`, recursively, sorted."""
    found: list[Input] = []
    seen: set[Path] = set()
    for path in paths:
        if path.is_dir():
            children = sorted(
                (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions),
                key=lambda p: p.relative_to(path).parts,
            )
            candidates = [Input(p, p.relative_to(path)) for p in children]
        else:
            candidates = [Input(path, PurePath(path.name))]
        for item in candidates:
            resolved = item.path.resolve()
            if resolved not in seen:
                seen.add(resolved)
                found.append(item)
    return found


class Outputs:
    """Output file names under one directory, made unique when two inputs share a stem."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._taken: set[Path] = set()

    def path(self, relative: PurePath, suffix: str = ".png") -> Path:
        """A fresh path for `relative` with `suffix`, its folders created."""
        base = self.directory / relative.parent / relative.stem
        candidate = base.with_name(base.name + suffix)
        n = 1
        while candidate in self._taken:
            candidate = base.with_name(f"{base.name}-{n}{suffix}")
            n += 1
        self._taken.add(candidate)
        candidate.parent.mkdir(parents=True, exist_ok=True)
        return candidate


def batches(items: Sequence[Input], size: int) -> Iterator[list[Input]]:
    """Consecutive chunks of at most `size` items."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def open_original(path: Path) -> Image.Image:
    """The image as the server saw it: decoded and turned upright by its EXIF orientation."""
    with Image.open(path) as image:
        image.load()
        return ImageOps.exif_transpose(image)


def summarize(result: dict[str, Any]) -> str:
    """One line about one prediction, whatever its task (told apart by its fields)."""
    if "overlay" in result:  # an explanation
        return f"{result['label']} {float(result['score']):.3f} ({result.get('method', '?')})"
    if "labels" in result:
        labels = result["labels"]
        return f"{labels[0]['label']} {float(labels[0]['score']):.3f}" if labels else "no label"
    if "detections" in result:
        detections = sorted(result["detections"], key=lambda d: -float(d["score"]))
        top = ", ".join(f"{d['label']} {float(d['score']):.2f}" for d in detections[:5])
        more = ", ..." if len(detections) > 5 else ""
        noun = "detection" if len(detections) == 1 else "detections"
        return f"{len(detections)} {noun}" + (f": {top}{more}" if detections else "")
    if "mask" in result:
        classes = sorted(result.get("classes") or [], key=lambda c: -float(c["fraction"]))
        shown = [c for c in classes if c["label"] not in BACKGROUND_LABELS] or classes
        return ", ".join(f"{c['label']} {100 * float(c['fraction']):.1f}%" for c in shown[:6]) or "no class"
    if "image" in result:
        size = result.get("size") or ["?", "?"]
        return f"restored image {size[0]}x{size[1]}"
    return json.dumps(result)[:80]


def _error_json(error: ApiError) -> dict[str, Any]:
    return {"status": error.status, "code": error.code, "message": error.message}


def _table(*columns: str, whole_first: bool = False) -> Table:
    table = Table(show_lines=False)
    for index, name in enumerate(columns):
        # `whole_first`: the first column holds short identifiers (model names) that must stay whole.
        table.add_column(name, overflow="fold", no_wrap=whole_first and index == 0)
    return table


def _row(table: Table, *cells: str, style: str = "") -> None:
    # Text, not markup: a file name like "[red].png" must print as it is.
    table.add_row(*(Text(cell, style=style) for cell in cells))


def _progress(console: Console, quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    )


Outcome = dict[str, Any] | ApiError
Send = Callable[[list[Path]], dict[str, Any]]


def _send_batch(send: Send, chunk: list[Input], key: str) -> list[Outcome]:
    """The answers to one batch, in order; one bad input no longer sinks the others."""
    try:
        body = send([item.path for item in chunk])
    except ApiError as exc:
        if exc.status in FATAL_STATUSES:
            raise
        if len(chunk) == 1:
            return [exc]
        # A bad or oversized input fails the whole request: send each alone to find it.
        return [outcome for item in chunk for outcome in _send_batch(send, [item], key)]
    results = body.get(key)
    if not isinstance(results, list) or len(results) != len(chunk):
        raise RequestFailed(f"the server answered {len(results or [])} {key} for {len(chunk)} inputs")
    if body.get("warning"):
        _warn(str(body["warning"]))
    return list(results)


def _warn(message: str) -> None:
    """A warning on stderr, once per command run (the random-weights warning comes with every answer)."""
    context = click.get_current_context(silent=True)
    warned: set[str] = context.meta.setdefault("maas.warned", set()) if context else set()
    if message not in warned:
        warned.add(message)
        Console(stderr=True).print(Text(f"warning: {message}", style="yellow"))


def _run_batches(inputs: list[Input], size: int, send: Send, key: str, quiet: bool) -> Iterator[tuple[Input, Outcome]]:
    """Each input with its answer (the list `key` of each response), `size` at a time under a progress bar."""
    with _progress(Console(stderr=True), quiet) as progress:
        bar = progress.add_task(key, total=len(inputs))
        for chunk in batches(inputs, size):
            yield from zip(chunk, _send_batch(send, chunk, key), strict=True)
            progress.advance(bar, len(chunk))


def _params(pairs: Sequence[tuple[str, ParamValue]]) -> dict[str, Any]:
    # Any: a pair may be the client's own keyword (top_k), checked by the server, not here.
    return dict(pairs)


# ---- commands ------------------------------------------------------------------------------


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="VISION_MAAS_URL", default=DEFAULT_URL, show_default=True, help="The server.")
@click.option("--api-key", envvar="VISION_MAAS_API_KEY", default=None, help="API key (env VISION_MAAS_API_KEY).")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds per request.",
)
@click.pass_context
def cli(ctx: click.Context, url: str, api_key: str | None, timeout: float) -> None:
    """Call the vision-maas models: predict, explain, generate, annotate, list, load-test; train your own."""
    ctx.obj = Settings(url.rstrip("/"), api_key or None, timeout)


_inputs = click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
_model = click.option("--model", "-m", required=True, help="A served model's name.")
_json = click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")


@cli.command()
@_inputs
@_model
@click.option("--param", "-p", "params", multiple=True, type=KEY_VALUE, metavar="K=V", help="A model parameter.")
@click.option("--batch", "-b", type=click.IntRange(1, 64), default=8, show_default=True, help="Images per request.")
@_json
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), help="Write annotated images here.")
@click.option("--model-version", help="That version of a trained model only, whatever its rollout.")
@click.pass_obj
def predict(
    settings: Settings,
    inputs: tuple[Path, ...],
    model: str,
    params: tuple[tuple[str, ParamValue], ...],
    batch: int,
    as_json: bool,
    out: Path | None,
    model_version: str | None,
) -> None:
    """Predict on images (directories: their image files, sorted); any task."""
    console = Console()
    with settings.client() as client:
        task = str(client.model(model).get("task", ""))
        video = task == Task.VIDEO_CLASSIFICATION
        files = expand_inputs(inputs, IMAGE_EXTENSIONS | VIDEO_EXTENSIONS if video else IMAGE_EXTENSIONS)
        if not files:
            raise click.UsageError("no image files among the inputs")
        outputs = Outputs(out) if out is not None else None
        table = _table("file", "result", *(["output"] if outputs else []))
        failures = 0
        parameters = _params(params)

        def send(paths: list[Path]) -> dict[str, Any]:
            return client.predict(model, paths, version=model_version, **parameters)

        for item, outcome in _run_batches(files, batch, send, "predictions", as_json):
            written = ""
            if isinstance(outcome, ApiError):
                failures += 1
            elif outputs is not None and not video:
                target = outputs.path(item.relative)
                try:
                    annotate_image(open_original(item.path), outcome, task).save(target, "PNG")
                except DrawError as exc:
                    _warn(f"{item.path}: {exc}")
                else:
                    written = str(target)
            if as_json:
                line: dict[str, Any] = {"file": str(item.path)}
                if isinstance(outcome, ApiError):
                    line["error"] = _error_json(outcome)
                else:
                    line["prediction"] = outcome
                if written:
                    line["output"] = written
                click.echo(json.dumps(line))
            elif isinstance(outcome, ApiError):
                _row(table, str(item.path), describe(outcome), *([""] if outputs else []), style="red")
            else:
                _row(table, str(item.path), summarize(outcome), *([written] if outputs else []))
    if not as_json:
        console.print(table)
    if failures:
        raise RequestFailed(f"{failures} of {len(files)} inputs failed")


@cli.command()
@_inputs
@_model
@click.option("--target", help="The label to explain (default: the top-1 label).")
@click.option("--target-index", type=click.IntRange(min=0), help="The class index to explain, instead of --target.")
@click.option("--alpha", type=click.FloatRange(0, 1), help="Heatmap opacity in the overlay.")
@click.option("--heatmap", is_flag=True, help="Also write the greyscale heatmaps (*.heatmap.png).")
@click.option("--batch", "-b", type=click.IntRange(1, 64), default=8, show_default=True, help="Images per request.")
@_json
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.pass_obj
def explain(
    settings: Settings,
    inputs: tuple[Path, ...],
    model: str,
    target: str | None,
    target_index: int | None,
    alpha: float | None,
    heatmap: bool,
    batch: int,
    as_json: bool,
    out: Path,
) -> None:
    """Write explanation overlays (Grad-CAM, attention rollout) of a classifier's decisions."""
    if target is not None and target_index is not None:
        raise click.UsageError("give --target or --target-index, not both")
    files = expand_inputs(inputs)
    if not files:
        raise click.UsageError("no image files among the inputs")
    outputs = Outputs(out)
    table = _table("file", "explained", "output")
    failures = 0
    with settings.client() as client:

        def send(paths: list[Path]) -> dict[str, Any]:
            return client.explain(model, paths, target=target, target_index=target_index, alpha=alpha)

        for item, outcome in _run_batches(files, batch, send, "explanations", as_json):
            if isinstance(outcome, ApiError):
                failures += 1
                if as_json:
                    click.echo(json.dumps({"file": str(item.path), "error": _error_json(outcome)}))
                else:
                    _row(table, str(item.path), describe(outcome), "", style="red")
                continue
            written = [outputs.path(item.relative)]
            annotate_image(open_original(item.path), outcome, "explanation").save(written[0], "PNG")
            if heatmap:
                written.append(outputs.path(item.relative, ".heatmap.png"))
                decode_png(outcome["heatmap"]).save(written[1], "PNG")
            if as_json:
                summary = {k: v for k, v in outcome.items() if k not in ("heatmap", "overlay")}
                click.echo(json.dumps({"file": str(item.path), "explanation": summary, "output": str(written[0])}))
            else:
                _row(table, str(item.path), summarize(outcome), ", ".join(map(str, written)))
    if not as_json:
        Console().print(table)
    if failures:
        raise RequestFailed(f"{failures} of {len(files)} inputs failed")


@cli.command()
@_model
@click.option("--num", "-n", type=click.IntRange(1, 64), default=1, show_default=True, help="Images to generate.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), help="Same seed, same images (default: random).")
@click.option("--label", help="The class to generate (conditional models).")
@click.option("--param", "-p", "params", multiple=True, type=KEY_VALUE, metavar="K=V", help="A model parameter.")
@_json
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.pass_obj
def generate(
    settings: Settings,
    model: str,
    num: int,
    seed: int | None,
    label: str | None,
    params: tuple[tuple[str, ParamValue], ...],
    as_json: bool,
    out: Path,
) -> None:
    """Generate images into a directory, named SEED-INDEX.png; prints the seed."""
    with settings.client() as client:
        body = client.generate(model, num_images=num, seed=seed, label=label, **_params(params))
    if body.get("warning"):
        _warn(str(body["warning"]))
    used = int(body["seed"])
    out.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    for i, image in enumerate(body["images"]):
        path = out / f"{used}-{i}.png"
        decode_png(image["image"]).save(path, "PNG")
        written.append({"file": str(path), "label": image["label"], "index": image["index"]})
    if as_json:
        click.echo(json.dumps({"model": body.get("model", model), "seed": used, "images": written}))
        return
    click.echo(f"seed {used}")
    table = _table("file", "label")
    for entry in written:
        _row(table, entry["file"], str(entry["label"]))
    Console().print(table)


@cli.command()
@_inputs
@click.option(
    "--feature",
    "-f",
    "features",
    multiple=True,
    required=True,
    type=FEATURE,
    metavar="MODEL[:K=V,K=V]",
    help="A model to run on every image, with its parameters; repeat for several.",
)
@click.option("--batch", "-b", type=click.IntRange(1, 64), default=16, show_default=True, help="Images per request.")
@_json
@click.pass_obj
def annotate(
    settings: Settings,
    inputs: tuple[Path, ...],
    features: tuple[tuple[str, dict[str, ParamValue]], ...],
    batch: int,
    as_json: bool,
) -> None:
    """Run several models on each image in one request; each feature succeeds or fails alone."""
    files = expand_inputs(inputs)
    if not files:
        raise click.UsageError("no image files among the inputs")
    table = _table("file", "model", "result")
    failures = 0
    with settings.client() as client, _progress(Console(stderr=True), as_json) as progress:
        bar = progress.add_task("annotating", total=len(files))
        for chunk in batches(files, batch):
            body = client.annotate([(item.path, list(features)) for item in chunk])
            responses = body.get("responses")
            if not isinstance(responses, list) or len(responses) != len(chunk):
                raise RequestFailed(f"the server answered {len(responses or [])} responses for {len(chunk)} images")
            for item, response in zip(chunk, responses, strict=True):
                image_error = response.get("error")
                failures += bool(image_error) + sum(bool(f.get("error")) for f in response.get("features", []))
                if as_json:
                    click.echo(json.dumps({"file": str(item.path), **response}))
                    continue
                if image_error:
                    message = f"{image_error['code']}: {image_error['message']}"
                    _row(table, str(item.path), "(image)", message, style="red")
                for feature in response.get("features", []):
                    error = feature.get("error")
                    if error:
                        _row(
                            table, str(item.path), feature["model"], f"{error['code']}: {error['message']}", style="red"
                        )
                    else:
                        _row(table, str(item.path), feature["model"], summarize(feature["result"]))
            progress.advance(bar, len(chunk))
    if not as_json:
        Console().print(table)
    if failures:
        raise RequestFailed(f"{failures} feature(s) or image(s) failed")


def _batching(batching: Any) -> str:
    if not isinstance(batching, dict) or "max_batch_size" not in batching:
        return ""
    wait = batching.get("batch_wait_timeout_s")
    return f"{batching['max_batch_size']}" + (f" / {1000 * float(wait):g} ms" if wait is not None else "")


def _weights(weights: Any) -> str:
    """`source:name` of a catalogue entry's weights; just `random` for random ones."""
    if not isinstance(weights, dict):
        return str(weights or "")
    source, name = str(weights.get("source", "")), str(weights.get("name", ""))
    return source if name in ("", source) else f"{source}:{name}"


@cli.command()
@_json
@click.pass_obj
def models(settings: Settings, as_json: bool) -> None:
    """List the served models: name, task, weights, version, batching (max size / wait)."""
    with settings.client() as client:
        entries = client.models()
    if as_json:
        click.echo(json.dumps(entries))
        return
    table = _table("name", "task", "weights", "version", "batching", whole_first=True)
    for entry in entries:
        source = _weights(entry.get("weights"))
        _row(
            table,
            str(entry.get("name", "")),
            str(entry.get("task", "")),
            source,
            str(entry.get("model_version", "")),
            _batching(entry.get("batching")),
        )
    Console().print(table)


# ---- training and the model lifecycle ----------------------------------------------------------


def _when(timestamp: float | None) -> str:
    """A Unix time as UTC, to the second; empty when there is none."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(timestamp)) if timestamp is not None else ""


def _fraction(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def _json_of(shapes: BaseModel | Sequence[BaseModel]) -> str:
    """A contract shape, or a list of them, as one line of JSON."""
    if isinstance(shapes, BaseModel):
        return shapes.model_dump_json()
    return json.dumps([shape.model_dump(mode="json") for shape in shapes])


def _titled(table: Table, title: str) -> Table:
    """`table` under `title`, at least as wide as the title (a narrow table would fold it)."""
    table.title = title
    table.min_width = len(title) + 4
    return table


def dataset_tables(dataset: Dataset) -> list[Table]:
    """A data set as tables: images per class, and the files refused (when any), with why."""
    classes = _table("class", "images", whole_first=True)
    for label, count in sorted(dataset.classes.items()):
        _row(classes, label, str(count))
    _titled(classes, f"data set {dataset.id}: {dataset.images} images in {len(dataset.classes)} classes")
    tables = [classes]
    if dataset.rejected:
        rejected = _table("file", "error")
        _titled(rejected, f"{len(dataset.rejected)} file(s) not kept")
        for item in dataset.rejected:
            _row(rejected, item.file, item.error, style="yellow")
        tables.append(rejected)
    return tables


def datasets_table(found: Sequence[Dataset]) -> Table:
    table = _table("id", "images", "classes", "rejected", "created", whole_first=True)
    for dataset in found:
        _row(
            table,
            dataset.id,
            str(dataset.images),
            ", ".join(f"{label} {count}" for label, count in sorted(dataset.classes.items())),
            str(len(dataset.rejected)),
            _when(dataset.created),
        )
    return table


def describe_progress(job: TrainingJob) -> str:
    """Where a job is, in one line: status, epoch, step, loss, validation accuracy, elapsed, ETA."""
    parts: list[str] = [job.status]
    progress = job.progress
    if progress is not None:
        parts.append(f"epoch {progress.epoch}/{progress.epochs}, step {progress.step}")
        if progress.loss is not None:
            parts.append(f"loss {progress.loss:.4f}")
        if progress.val_accuracy is not None:
            parts.append(f"val accuracy {progress.val_accuracy:.3f}")
        parts.append(f"{progress.elapsed_s:.0f} s")
        if progress.eta_s is not None and job.status == "running":
            parts.append(f"ETA {progress.eta_s:.0f} s")
    if job.version:
        parts.append(f"version {job.version}")
    if job.error:
        parts.append(job.error)
    return " · ".join(parts)


def report_tables(report: EvaluationReport) -> list[Table]:
    """An evaluation report as tables: the summary, each class's precision, recall and F1, the
    confusion matrix (rows: true label, columns: predicted; the diagonal is right) and the curve."""
    summary = _table("measure", "value")
    _titled(summary, "held-out evaluation")
    for name, value in (
        ("accuracy", _fraction(report.accuracy)),
        ("macro precision", _fraction(report.macro_precision)),
        ("macro recall", _fraction(report.macro_recall)),
        ("macro F1", _fraction(report.macro_f1)),
        ("images", f"{report.train_images} trained on, {report.val_images} held out"),
    ):
        _row(summary, name, value)
    per_class = _table("class", "precision", "recall", "F1", "support", whole_first=True)
    _titled(per_class, "per class")
    for label in report.labels:
        metrics = report.per_class.get(label)
        if metrics is not None:
            row = (_fraction(metrics.precision), _fraction(metrics.recall), _fraction(metrics.f1), str(metrics.support))
            _row(per_class, label, *row)
    matrix = _titled(Table(), "confusion matrix (rows: true, columns: predicted)")
    matrix.add_column("true \\ predicted", no_wrap=True)
    for label in report.labels:
        matrix.add_column(label, justify="right", no_wrap=True)
    for i, (label, counts) in enumerate(zip(report.labels, report.confusion_matrix, strict=True)):
        cells = [Text(str(n), style="bold green" if i == j else ("red" if n else "dim")) for j, n in enumerate(counts)]
        matrix.add_row(Text(label), *cells)
    curve = _table("epoch", "loss", "val accuracy")
    _titled(curve, "training curve")
    for point in report.curve:
        _row(curve, str(point.epoch), f"{point.loss:.4f}", _fraction(point.val_accuracy))
    return [summary, per_class, matrix, curve]


def jobs_table(found: Sequence[TrainingJob]) -> Table:
    table = _table("id", "model", "status", "base model", "dataset", "progress", "version", "created", whole_first=True)
    for job in found:
        progress = job.progress
        where = f"epoch {progress.epoch}/{progress.epochs}" if progress is not None else ""
        style = {"failed": "red", "cancelled": "yellow"}.get(job.status, "")
        request = job.request
        cells = (request.name, job.status, request.base_model, request.dataset, where, job.version or "")
        _row(table, job.id, *cells, _when(job.created), style=style)
    return table


def job_tables(job: TrainingJob) -> list[Table]:
    """A job as tables: what it trains and where it is, then its report once it has one."""
    table = _table("field", "value")
    _titled(table, f"job {job.id}")
    request = job.request
    rows = [
        ("status", describe_progress(job)),
        ("model", request.name),
        ("base model", request.base_model),
        ("dataset", request.dataset),
        (
            "settings",
            ", ".join(f"{k} {v}" for k, v in request.model_dump(exclude={"name", "base_model", "dataset"}).items()),
        ),
        ("created", _when(job.created)),
        ("started", _when(job.started)),
        ("finished", _when(job.finished)),
    ]
    for name, value in rows:
        if value:  # a job not started yet has no start time, and so on
            _row(table, name, value, style="red" if name == "status" and job.status == "failed" else "")
    return [table, *(report_tables(job.report) if job.report is not None else [])]


def versions_table(found: Sequence[ModelVersion]) -> Table:
    columns = ("version", "state", "traffic", "accuracy", "macro F1", "base model", "dataset", "created", "job")
    table = _table(*columns, whole_first=True)
    for version in found:
        style = {"stable": "bold", "canary": "cyan", "inactive": "dim"}.get(version.state, "")
        report = version.report
        cells = (version.state, f"{version.percent}%", _fraction(report.accuracy), _fraction(report.macro_f1))
        where = (version.base_model, version.dataset, _when(version.created), version.job or "")
        _row(table, version.version, *cells, *where, style=style)
    return table


def rollout_table(rollout: Rollout) -> Table:
    table = _table("field", "value")
    _titled(table, f"rollout of {rollout.name}")
    stable_share = 100 - rollout.percent if rollout.canary else 100
    _row(table, "stable", f"{rollout.stable} ({stable_share}%)" if rollout.stable else "none")
    _row(table, "canary", f"{rollout.canary} ({rollout.percent}%)" if rollout.canary else "none")
    _row(table, "history", ", ".join(rollout.history) or "none")
    return table


def _print(*tables: Table) -> None:
    console = Console()
    for table in tables:
        console.print(table)


def _show(as_json: bool, shapes: BaseModel | Sequence[BaseModel], *tables: Table) -> None:
    """The answer as one JSON line (--json), or as tables."""
    if as_json:
        click.echo(_json_of(shapes))
    else:
        _print(*tables)


class _Bars:
    """Progress bars on stderr whose right-hand text the caller writes (files, bytes, epochs)."""

    def __init__(self, quiet: bool) -> None:
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=quiet or not self.console.is_terminal,
        )

    def add(self, description: str, visible: bool = True) -> TaskID:
        return self.progress.add_task(description, total=None, detail="", visible=visible)

    def update(self, task: TaskID, done: float, total: float | None, detail: str) -> None:
        self.progress.update(task, completed=done, total=total, detail=detail)


def follow_to_end(client: VisionClient, job: TrainingJob, as_json: bool) -> TrainingJob:
    """Follow a job's events to its end; live progress on stderr (a bar on a terminal, a line per
    change elsewhere), or each event as a JSON line on stdout. The job as it ended."""
    if job.status in FINISHED:
        return job
    bars = _Bars(as_json)
    live = not bars.progress.disable
    with bars.progress:
        task = bars.add(f"training {job.request.name}")
        try:
            for event in client.follow_job(job.id):
                job = event.job
                if as_json:
                    click.echo(json.dumps({"event": event.event, "job": job.model_dump(mode="json")}))
                elif live:
                    progress = job.progress
                    done, total = (progress.epoch, progress.epochs) if progress else (0, None)
                    bars.update(task, done, total, describe_progress(job))
                else:
                    bars.console.print(Text(describe_progress(job)), highlight=False)
        except KeyboardInterrupt:
            bars.console.print(f"stopped following; the job goes on (maas jobs cancel {job.id} stops it)")
            raise
    return job


def _finish(job: TrainingJob, as_json: bool) -> None:
    """Print a finished job (its report when it succeeded); exit status 1 unless it succeeded."""
    if as_json:
        click.echo(_json_of(job))
    else:
        _print(*job_tables(job))
    if job.status in ("failed", "cancelled"):
        raise RequestFailed(f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))


@cli.group()
def datasets() -> None:
    """Upload, list, show and delete labelled image sets (admin scope)."""


@datasets.command("upload")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@_json
@click.pass_obj
def datasets_upload(settings: Settings, path: Path, as_json: bool) -> None:
    """Upload PATH: a folder of LABEL/IMAGE files (packed into a zip on the way) or a zip, tar or
    tar.gz archive. Every image is checked by the server; files it cannot use are listed."""
    bars = _Bars(as_json)
    with settings.client() as client, bars.progress:
        packing = bars.add("packing", visible=path.is_dir())
        sending = bars.add("uploading")

        def packed(done: int, total: int) -> None:
            bars.update(packing, done, total, f"{done}/{total} files")

        def sent(done: int, total: int) -> None:
            bars.update(sending, done, total, f"{_size(done)}/{_size(total)}")

        try:
            dataset = client.upload_dataset(path, progress=sent, packing=packed)
        except ArchiveError as exc:
            raise click.BadParameter(str(exc), param_hint="PATH") from None
    _show(as_json, dataset, *dataset_tables(dataset))


@datasets.command("list")
@_json
@click.pass_obj
def datasets_list(settings: Settings, as_json: bool) -> None:
    """List the stored data sets: id, images, images per class, files refused, when stored."""
    with settings.client() as client:
        found = client.datasets()
    _show(as_json, found, datasets_table(found))


@datasets.command("show")
@click.argument("dataset_id", metavar="ID")
@_json
@click.pass_obj
def datasets_show(settings: Settings, dataset_id: str, as_json: bool) -> None:
    """Show one data set: images per class and the files that were not kept."""
    with settings.client() as client:
        dataset = client.dataset(dataset_id)
    _show(as_json, dataset, *dataset_tables(dataset))


@datasets.command("delete")
@click.argument("dataset_id", metavar="ID")
@click.pass_obj
def datasets_delete(settings: Settings, dataset_id: str) -> None:
    """Delete a data set (the versions trained on it stay)."""
    with settings.client() as client:
        client.delete_dataset(dataset_id)
    click.echo(f"deleted data set {dataset_id}")


_follow = click.option("--follow", "-f", is_flag=True, help="Show live progress until the job ends, then its report.")


@cli.command()
@click.option("--name", required=True, help="The model to create, or to add a version to.")
@click.option("--base-model", required=True, help="A served classifier whose backbone is fine-tuned (digits_cnn, ...).")
@click.option("--dataset", required=True, help="The data set's id (maas datasets list).")
@click.option("--epochs", type=int, help="Passes over the training split.")
@click.option("--learning-rate", type=float)
@click.option("--batch-size", type=int)
@click.option("--freeze-backbone/--train-backbone", default=None, help="Train the new head only.")
@click.option("--augment/--no-augment", default=None, help="Augment the training images.")
@click.option("--val-fraction", type=float, help="Share of each class held out for the report.")
@click.option("--seed", type=int, help="Same seed, same split and same initial head.")
@_follow
@_json
@click.pass_obj
def train(settings: Settings, /, follow: bool, as_json: bool, **fields: Any) -> None:
    """Start a training job (admin scope); with --follow, live progress and, at the end, the report:
    accuracy, per-class precision, recall and F1, the confusion matrix. Unset options: the API's defaults."""
    try:
        request = training_request(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise click.UsageError(problems) from None
    with settings.client() as client:
        job = client.train(request)
        if not follow:
            _show(as_json, job, *job_tables(job))
            return
        if not as_json:
            Console(stderr=True).print(Text(f"job {job.id}: training {request.name} from {request.base_model}"))
        job = follow_to_end(client, job, as_json)
    _finish(job, as_json)


@cli.group()
def jobs() -> None:
    """List, show, follow and cancel training jobs (admin scope)."""


@jobs.command("list")
@_json
@click.pass_obj
def jobs_list(settings: Settings, as_json: bool) -> None:
    """List the training jobs: model, status, base model, data set, epoch, version."""
    with settings.client() as client:
        found = client.jobs()
    _show(as_json, found, jobs_table(found))


@jobs.command("show")
@click.argument("job_id", metavar="ID")
@_follow
@_json
@click.pass_obj
def jobs_show(settings: Settings, job_id: str, follow: bool, as_json: bool) -> None:
    """Show a job: status, progress and, once it succeeded, its report (--follow: until it ends)."""
    with settings.client() as client:
        job = client.job(job_id)
        if follow:
            job = follow_to_end(client, job, as_json)
    if follow:
        _finish(job, as_json)
    else:
        _show(as_json, job, *job_tables(job))


@jobs.command("cancel")
@click.argument("job_id", metavar="ID")
@_json
@click.pass_obj
def jobs_cancel(settings: Settings, job_id: str, as_json: bool) -> None:
    """Cancel a queued or running job (a finished one is left as it is: exit status 1)."""
    with settings.client() as client:
        job = client.cancel_job(job_id)
    click.echo(_json_of(job) if as_json else f"job {job.id}: {job.status}")


@cli.command()
@click.argument("model")
@_json
@click.pass_obj
def versions(settings: Settings, model: str, as_json: bool) -> None:
    """List a trained model's versions: state, share of traffic, held-out accuracy and F1."""
    with settings.client() as client:
        found = client.versions(model)
    _show(as_json, found, versions_table(found))


@cli.command()
@click.argument("model")
@click.argument("version", required=False)
@click.option("--percent", "-p", type=click.IntRange(1, 100), help="The version's share of :predict; 100 promotes it.")
@_json
@click.pass_obj
def rollout(settings: Settings, model: str, version: str | None, percent: int | None, as_json: bool) -> None:
    """Send --percent of MODEL's :predict to VERSION (a canary; 100 promotes it); without VERSION,
    show which versions answer now."""
    if (version is None) != (percent is None):
        raise click.UsageError("give VERSION and --percent together (or neither, to see the rollout)")
    with settings.client() as client:
        state = (
            client.rollout_state(model)
            if version is None or percent is None
            else client.rollout(model, version, percent)
        )
    _show(as_json, state, rollout_table(state))


@cli.command()
@click.argument("model")
@_json
@click.pass_obj
def rollback(settings: Settings, model: str, as_json: bool) -> None:
    """Drop MODEL's canary; without one, return to its previous stable version."""
    with settings.client() as client:
        state = client.rollback(model)
    _show(as_json, state, rollout_table(state))


# ---- bench ---------------------------------------------------------------------------------


@dataclass
class BenchResult:
    """What a closed-loop load test measured."""

    url: str
    model: str
    concurrency: int
    images_per_request: int
    duration_s: float
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    client_cpu_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The figures as a JSON-able dict: latencies in milliseconds, throughput per second."""
        ok = len(self.latencies_s)
        failed = sum(self.errors.values())
        p50, p90, p99 = (
            (float(v) * 1000 for v in np.percentile(self.latencies_s, [50, 90, 99]))
            if ok
            else (math.nan, math.nan, math.nan)
        )
        elapsed = max(self.elapsed_s, 1e-9)
        return {
            "url": self.url,
            "model": self.model,
            "concurrency": self.concurrency,
            "images_per_request": self.images_per_request,
            "duration_s": self.duration_s,
            "elapsed_s": round(self.elapsed_s, 3),
            "requests": ok + failed,
            "ok": ok,
            "errors": dict(sorted(self.errors.items())),
            "requests_per_s": round(ok / elapsed, 2),
            "images_per_s": round(ok * self.images_per_request / elapsed, 2),
            "latency_ms": {
                "p50": _round(p50),
                "p90": _round(p90),
                "p99": _round(p99),
                "mean": _round(1000 * sum(self.latencies_s) / ok) if ok else None,
            },
            "client_cpu_s": round(self.client_cpu_s, 3),
            "client_cpu_ms_per_request": round(1000 * self.client_cpu_s / (ok + failed), 3) if ok + failed else None,
        }


def _round(value: float) -> float | None:
    return round(value, 2) if math.isfinite(value) else None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_bench(
    settings: Settings,
    model: str,
    image: bytes,
    parameters: dict[str, Any],
    concurrency: int,
    duration: float,
    images_per_request: int = 1,
) -> BenchResult:
    """A closed loop: `concurrency` workers each send a request as soon as their last one is answered."""
    result = BenchResult(settings.url, model, concurrency, images_per_request, duration)
    payload = [image] * images_per_request
    # No retries: a load test counts 429s and 503s rather than hiding them behind waits.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with AsyncVisionClient(
        settings.url, settings.api_key, settings.timeout, RetryPolicy(max_attempts=1), limits=limits
    ) as client:
        # One request first: a wrong model, key or image fails here, loudly, before any timing.
        await client.predict(model, payload, **parameters)

        async def worker(deadline: float) -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    await client.predict(model, payload, **parameters)
                except ApiError as exc:
                    result.errors[str(exc.status)] += 1
                except httpx.HTTPError as exc:
                    result.errors[type(exc).__name__] += 1
                else:
                    result.latencies_s.append(time.perf_counter() - started)

        cpu = _cpu_seconds()
        start = time.perf_counter()
        tasks = [asyncio.create_task(worker(start + duration)) for _ in range(concurrency)]
        # Requests in flight at the deadline may finish, within one request timeout; no later.
        _, pending = await asyncio.wait(tasks, timeout=duration + settings.timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        result.elapsed_s = time.perf_counter() - start
        result.client_cpu_s = _cpu_seconds() - cpu
        for task in tasks:
            # A worker stopped by anything but an API or network error: a bug worth its traceback.
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
    return result


@cli.command()
@click.argument("url", required=False)
@_model
@click.option("--image", "-i", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option(
    "--duration",
    "-d",
    type=click.FloatRange(0, MAX_BENCH_SECONDS, min_open=True),
    default=10.0,
    show_default=True,
    help=f"Seconds of load (at most {MAX_BENCH_SECONDS:g}).",
)
@click.option("--batch", "-b", type=click.IntRange(1, 64), default=1, show_default=True, help="Images per request.")
@click.option("--param", "-p", "params", multiple=True, type=KEY_VALUE, metavar="K=V", help="A model parameter.")
@_json
@click.pass_obj
def bench(
    settings: Settings,
    url: str | None,
    model: str,
    image: Path,
    concurrency: int,
    duration: float,
    batch: int,
    params: tuple[tuple[str, ParamValue], ...],
    as_json: bool,
) -> None:
    """Load-test :predict at URL (default: --url) for a bounded time; latency, throughput, errors."""
    target = Settings(url.rstrip("/"), settings.api_key, settings.timeout) if url else settings
    if not as_json:
        Console(stderr=True).print(
            Text(f"{concurrency} workers on {target.url} for {duration:g} s ({model}, {batch} image(s)/request)")
        )
    result = asyncio.run(run_bench(target, model, image.read_bytes(), _params(params), concurrency, duration, batch))
    summary = result.summary()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        table = _table("measure", "value")
        latency = summary["latency_ms"]
        rows = [
            ("requests", f"{summary['requests']} ({summary['ok']} ok)"),
            ("errors", ", ".join(f"{k}: {v}" for k, v in summary["errors"].items()) or "none"),
            ("throughput", f"{summary['requests_per_s']} req/s, {summary['images_per_s']} images/s"),
            *((f"latency {k}", f"{v} ms" if v is not None else "-") for k, v in latency.items()),
            ("elapsed", f"{summary['elapsed_s']} s"),
            ("client CPU", f"{summary['client_cpu_s']} s ({summary['client_cpu_ms_per_request']} ms/request)"),
        ]
        for name, value in rows:
            _row(table, name, value)
        Console().print(table)
    if not result.latencies_s:
        raise RequestFailed("no request succeeded")


# ---- entry point ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on `argv` (default: sys.argv[1:]); the exit status (0, 1 or 2)."""
    try:
        status = cli.main(args=list(argv) if argv is not None else None, prog_name="maas", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:  # Ctrl-C, or end of input at a prompt
        click.echo("Aborted.", err=True)
        return 1
    # Without standalone mode, click returns the code of an Exit (such as --help's 0), else the result.
    return status if isinstance(status, int) else 0
