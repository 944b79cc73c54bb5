"""Training jobs on Ray Train: the `TrainingJobs` deployment of the catalogue application queues
jobs, runs each as a `TorchTrainer` on the same cluster, keeps every job in the model store
(jobs/<id>.json) and publishes a succeeded job's model as a signed, immutable version.

- Resources: each job's workers take `training.workers` x (`cpus_per_worker` CPUs, a GPU when
  `use_gpu` or the cluster has GPUs, and `resources_per_worker`), reserved by Ray Train's placement
  group, so training never takes what the serving replicas hold. At most `max_running_jobs` run;
  others wait queued; a tenant has at most `max_jobs_per_tenant` queued or running (429).
- Faults: checkpoints every epoch in Ray Train's storage path; `FailureConfig(max_failures)`
  restarts a failed worker group and the train loop resumes from `ray.train.get_checkpoint()`.
  A job found running when the replica starts (the application restarted) is queued again and
  resumes from its run's last checkpoint: Ray Train finds the run in storage by its name (the job id).
- Progress and cancel travel through a small actor per job (`JobChannel`): the first worker sends
  its progress up, every worker reads the cancel flag, and all agree on the step they stop at.
- Ray Train V2 (the default in Ray 2.60): `fit()` creates a controller actor pinned to this node and
  blocks until the run ends, so it runs in a thread here; the controller and its workers are owned
  by this replica and end with it.

The signing key of trained versions: `training.signing_key_file`, else the PEM in the variable named
by `training.signing_key_env`; with neither, a one-machine cluster (a laptop) creates the store's own
key once (<store>/keys/deployment-signing.pem, its public key beside it) and a job on a larger
cluster fails, saying what to set. Never the release key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import serve

from contract.lifecycle import (
    FINISHED,
    CurvePoint,
    EvaluationReport,
    ModelVersion,
    Progress,
    Rollout,
    TrainingJob,
    TrainingJobRequest,
)
from contract.tasks import Task
from deployments.args import TrainingArgs
from deployments.datasets import delete_dataset
from deployments.errors import Conflict, InvalidParameters, NotFound, TooManyRequests
from deployments.signing import SigningKeyMissing, signing_key
from deployments.store import Store, read_json, write_json

logger = logging.getLogger("ray.serve")

# How often the replica reads a running job's progress, and how long an event stream stays
# silent before it sends a comment (so proxies keep the connection).
POLL_S = 0.5
HEARTBEAT_S = 15.0
# Workers read the cancel flag every this many steps (and agree on it: one collective per check).
CANCEL_EVERY = 5
# The first worker sends its progress at most this often.
PROGRESS_EVERY_S = 0.25
STATE_FILE = "state.pt"
REPORT_FILE = "report.json"
CURVE_FILE = "curve.json"


@ray.remote(num_cpus=0)
class JobChannel:
    """Between one job's training workers and the replica: progress up, the cancel flag down."""

    def __init__(self) -> None:
        self._progress: dict[str, Any] | None = None
        self._cancelled = False
        self._workers: list[dict[str, int]] = []

    def started(self, rank: int, pid: int, epoch: int) -> None:
        self._workers.append({"rank": rank, "pid": pid, "start_epoch": epoch})

    def progress(self, progress: dict[str, Any]) -> None:
        self._progress = progress

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def snapshot(self) -> dict[str, Any]:
        return {"progress": self._progress, "workers": list(self._workers)}


# ---- the train loop: what each Ray Train worker runs ------------------------------------


def _agree(flag: bool, world: int) -> bool:
    """Whether any worker says yes; every worker gets the same answer at the same step."""
    if world == 1:
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _mean(value: float, world: int) -> float:
    if world == 1:
        return value
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world


def train_loop(config: dict[str, Any]) -> None:
    """Fine-tune `config["request"]` on its data set, checkpointing every epoch (Ray Train worker)."""
    import ray.train
    import ray.train.torch
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from models.trained import base_classifier, transfer_model
    from models.training import finetune

    request = TrainingJobRequest.model_validate(config["request"])
    channel = config["channel"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["threads"])
    torch.manual_seed(request.seed)  # the same new head on every worker

    base = base_classifier(request.base_model)
    data = finetune.read_dataset(Path(config["dataset_dir"]))
    train_idx, val_idx = finetune.stratified_split(data.labels, request.val_fraction, request.seed)
    module, head = transfer_model(base, len(data.categories))
    if request.freeze_backbone:
        finetune.freeze_backbone(module, head)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=request.learning_rate)

    start_epoch, step = 0, 0
    curve: list[CurvePoint] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
            curve = [CurvePoint.model_validate(p) for p in json.loads((Path(directory) / CURVE_FILE).read_text())]
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
    ray.get(channel.started.remote(rank, os.getpid(), start_epoch))

    model = ray.train.torch.prepare_model(module)
    device = ray.train.torch.get_device()
    augment = torch.Generator().manual_seed(request.seed * 7919 + rank * 104729 + start_epoch)
    train_set = finetune.ImageSet(
        data, train_idx, base.image_mode, base.preprocess, augment if request.augment else None
    )
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_set, num_replicas=world, rank=rank, shuffle=True, seed=request.seed
    )
    # batch_size is the whole job's: each worker takes its share of every step.
    loader = DataLoader(train_set, batch_size=max(1, request.batch_size // world), sampler=sampler)
    val_loader = DataLoader(finetune.ImageSet(data, val_idx, base.image_mode, base.preprocess), batch_size=64)
    total_steps = request.epochs * len(loader)
    began, began_step, sent = time.monotonic(), step, 0.0
    val_accuracy = curve[-1].val_accuracy if curve else None

    for epoch in range(start_epoch, request.epochs):
        sampler.set_epoch(epoch)
        finetune.train_mode(module, head, request.freeze_backbone)
        running = [0.0, 0]

        def on_step(
            images: int,
            loss: float,
            epoch: int = epoch,
            running: list[float] = running,
            val_accuracy: float | None = val_accuracy,
        ) -> bool:
            nonlocal step, sent
            step += 1
            running[0] += loss * images
            running[1] += images
            now = time.monotonic()
            if rank == 0 and now - sent >= PROGRESS_EVERY_S:
                sent = now
                rate = (step - began_step) / max(now - began, 1e-6)
                channel.progress.remote(
                    {
                        "epoch": epoch + 1,
                        "epochs": request.epochs,
                        "step": step,
                        "loss": running[0] / running[1],
                        "val_accuracy": val_accuracy,
                        "eta_s": (total_steps - step) / rate if rate > 0 else None,
                    }
                )
            if step % CANCEL_EVERY:
                return True
            return not _agree(ray.get(channel.cancelled.remote()), world)

        loss, finished = finetune.train_epoch(model, loader, optimizer, device, on_step)
        if not finished or _agree(ray.get(channel.cancelled.remote()), world):
            return  # cancelled: every worker stops at the same step, no checkpoint, no report
        loss = _mean(loss, world)
        with tempfile.TemporaryDirectory() as directory:
            saved = None
            if rank == 0:
                truth, predicted = finetune.predict(module, val_loader, device)
                val_accuracy = sum(t == p for t, p in zip(truth, predicted, strict=True)) / max(len(truth), 1)
                curve.append(CurvePoint(epoch=epoch + 1, loss=loss, val_accuracy=val_accuracy))
                torch.save(
                    {
                        "model": module.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1,
                        "step": step,
                    },
                    Path(directory) / STATE_FILE,
                )
                (Path(directory) / CURVE_FILE).write_text(json.dumps([p.model_dump() for p in curve]))
                if epoch + 1 == request.epochs:
                    report = finetune.evaluation_report(
                        truth, predicted, data.categories, curve, len(train_idx), len(val_idx)
                    )
                    (Path(directory) / REPORT_FILE).write_text(report.model_dump_json())
                rate = (step - began_step) / max(time.monotonic() - began, 1e-6)
                channel.progress.remote(
                    {
                        "epoch": epoch + 1,
                        "epochs": request.epochs,
                        "step": step,
                        "loss": loss,
                        "val_accuracy": val_accuracy,
                        "eta_s": (total_steps - step) / rate if rate > 0 else None,
                    }
                )
                saved = ray.train.Checkpoint.from_directory(directory)
            ray.train.report({"epoch": epoch + 1, "loss": loss}, checkpoint=saved)


# ---- the deployment -----------------------------------------------------------------------


def _scrub(message: str) -> str:
    """An error message fit for the API: its first line, file paths reduced to their names."""
    line = message.strip().splitlines()[0] if message.strip() else "training failed"
    return re.sub(r"(?:[A-Za-z]:)?(?:/[^\s'\":,]+)+", lambda m: Path(m.group()).name, line)[:500]


def failure_message(exc: BaseException) -> str:
    """What a failed job says: the first worker error (or the controller's), without a traceback."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        error: BaseException = next(iter(failures.values()))
        # Ray Train V2 wraps a train loop's exception with its traceback as the message
        # (ray/train/v2/_internal/exceptions.py UserExceptionWithTraceback._base_exc); Ray's
        # task errors keep theirs as `cause`.
        for attribute in ("_base_exc", "cause"):
            inner = getattr(error, attribute, None)
            if isinstance(inner, BaseException):
                error = inner
        return f"a training worker failed: {type(error).__name__}: {_scrub(str(error))}"
    cause = getattr(exc, "controller_failure", None) or getattr(exc, "cause", None)
    error = cause if isinstance(cause, BaseException) else exc
    return f"{type(error).__name__}: {_scrub(str(error))}"


def _create_if_absent(path: Path, data: Any) -> bool:
    """Write `data` as JSON at `path` only if nothing is there (atomic: a link fails on an existing name)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def publish_version(
    store: Store, job: TrainingJob, checkpoint_dir: Path, key: bytes, encryption_key_id: str | None = None
) -> ModelVersion:
    """Store the job's fine-tuned model as an immutable, signed version (its weights encrypted at
    rest under `encryption_key_id` of $VISION_MAAS_WEIGHTS_KEYS when given); return its record."""
    import torch
    from safetensors.torch import save_file

    from models import crypto, manifest
    from models.trained import ENCRYPTED_WEIGHTS_FILE, VERSION_FILE, WEIGHTS_FILE
    from models.weights import sha256_file

    state = torch.load(checkpoint_dir / STATE_FILE, map_location="cpu", weights_only=True)["model"]
    report = EvaluationReport.model_validate_json((checkpoint_dir / REPORT_FILE).read_text())
    name = job.request.name
    versions = store.versions(name)
    versions.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{job.id}-", dir=versions))
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(staging / WEIGHTS_FILE))
        version = sha256_file(staging / WEIGHTS_FILE)[:12]
        final = store.version(name, version)
        if final.exists():  # the same weights are stored already: versions are never overwritten
            return ModelVersion.model_validate(read_json(final / VERSION_FILE))
        record = ModelVersion(
            name=name,
            version=version,
            base_model=job.request.base_model,
            dataset=job.request.dataset,
            categories=report.labels,
            created=time.time(),
            job=job.id,
            report=report,
        )
        write_json(staging / VERSION_FILE, record.model_dump(mode="json"))
        if encryption_key_id is not None:
            plain = staging / WEIGHTS_FILE
            crypto.encrypt_file(plain, staging / ENCRYPTED_WEIGHTS_FILE, encryption_key_id, crypto.load_keys())
            plain.unlink()
        manifest.write_manifest(staging, also=[VERSION_FILE])  # its categories and base model are signed too
        manifest.sign_manifest(staging, key)
        try:
            staging.rename(final)  # whole, at once; never over an existing version
        except OSError:
            if not final.exists():
                raise
        _create_if_absent(store.rollout(name), Rollout(name=name, stable=version).model_dump(mode="json"))
        return record
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def runtime_env(niceness: int) -> dict[str, Any]:
    """The runtime env of training's processes: the queue's replica, and so Ray Train's controller, its
    helper actors and its workers, which inherit it. Each starts under `nice`, from its first
    instruction: a Ray worker otherwise runs its start-up (Python, importing Ray, about a second of
    CPU) at the raylet's priority before taking its own, and a job starts about eight of them.
    Ray adds nothing more (RAY_worker_niceness 0): `niceness` is relative to Ray's own processes."""
    return {
        "py_executable": f"nice -n {niceness} {sys.executable}",
        "env_vars": {"RAY_worker_niceness": "0"},
    }


@dataclass
class _Run:
    """A job running now: its channel to the workers, the task awaiting it, whether it was cancelled."""

    channel: Any = None
    task: asyncio.Task[None] | None = None
    cancelled: bool = False


@serve.deployment  # options: deployments.app.TRAINING_OPTIONS
class TrainingJobs:
    """Queues, runs, cancels and records the training jobs of one model store."""

    def __init__(self, training: TrainingArgs, reserved: list[str]) -> None:
        self.args = training
        self.store = Store.at(training.store)
        self.reserved = frozenset(reserved)  # the configured models' names: not trainable
        self.jobs: dict[str, TrainingJob] = {}
        self.queue: list[str] = []
        self.runs: dict[str, _Run] = {}
        self._signals: dict[str, asyncio.Event] = {}
        self._workers: dict[str, list[dict[str, int]]] = {}  # as the jobs' channels last said
        self._started = False
        for path in sorted(self.store.jobs.glob("*.json")):
            try:
                job = TrainingJob.model_validate(read_json(path))
            except (OSError, ValueError):
                logger.warning("training: skipping unreadable job record %s", path.name)
                continue
            if job.status == "running":
                # The application restarted under it: run it again; it resumes from its last checkpoint.
                job = job.model_copy(update={"status": "queued"})
                write_json(self.store.job(job.id), job.model_dump(mode="json"))
                logger.info("training: job %s was running at startup; queued again to resume", job.id)
            self.jobs[job.id] = job
        self.queue = sorted((j.id for j in self.jobs.values() if j.status == "queued"), key=self._created)

    def _created(self, job_id: str) -> float:
        return self.jobs[job_id].created

    # ---- what the routes call ----

    async def submit(self, request: dict[str, Any], tenant: str | None) -> dict[str, Any]:
        """Queue a new job (202); 409 for a configured model's name, 422 for a base model that is not
        a registered classifier, 404 for an unknown data set, 429 over the tenant's quota."""
        self._start()
        job_request = TrainingJobRequest.model_validate(request)
        if job_request.name in self.reserved:
            raise Conflict(f"{job_request.name!r} is a configured model; train under another name")
        _check_base(job_request.base_model)
        if not (self.store.dataset(job_request.dataset) / "dataset.json").is_file():
            raise NotFound(f"data set {job_request.dataset!r} does not exist; see GET /v1/datasets")
        active = [j for j in self.jobs.values() if j.tenant == tenant and j.status not in FINISHED]
        if len(active) >= self.args.max_jobs_per_tenant:
            raise TooManyRequests(
                f"{len(active)} jobs of this tenant are queued or running; the limit is {self.args.max_jobs_per_tenant}"
            )
        job = TrainingJob(
            id=secrets.token_hex(8), status="queued", request=job_request, tenant=tenant, created=time.time()
        )
        self._record(job)
        self.queue.append(job.id)
        self._pump()
        return self.jobs[job.id].model_dump(mode="json")

    async def delete_dataset(self, dataset_id: str) -> None:
        """Delete a data set (404 when there is none), unless a queued or running job trains on it
        (409). Here, not in the ingress: a submission's check of its data set and this run on one
        event loop, so no job is queued on a data set being deleted."""
        self._start()
        using = sorted(j.id for j in self.jobs.values() if j.request.dataset == dataset_id and j.status not in FINISHED)
        if using:
            raise Conflict(
                f"data set {dataset_id!r} is used by queued or running jobs {', '.join(using)}; "
                "cancel them or wait for them to end"
            )
        delete_dataset(self.store, dataset_id)

    async def list_jobs(self) -> list[dict[str, Any]]:
        """Every job, oldest first."""
        self._start()
        return [j.model_dump(mode="json") for j in sorted(self.jobs.values(), key=lambda j: j.created)]

    async def get(self, job_id: str) -> dict[str, Any]:
        """One job; 404 when unknown."""
        self._start()
        return self._job(job_id).model_dump(mode="json")

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; 409 when it has finished already."""
        self._start()
        job = self._job(job_id)
        if job.status in FINISHED:
            raise Conflict(f"job {job_id} has finished ({job.status}); nothing to cancel")
        if job_id in self.queue:
            self.queue.remove(job_id)
        run = self.runs.get(job_id)
        if run is not None:
            run.cancelled = True
            if run.channel is not None:
                await run.channel.cancel.remote()
        self._record(job.model_copy(update={"status": "cancelled", "finished": time.time()}))
        return self.jobs[job_id].model_dump(mode="json")

    async def events(self, job_id: str) -> AsyncIterator[tuple[str, str]]:
        """("progress", job JSON) each time the job changes, then ("done", job JSON); ("ping", "")
        after HEARTBEAT_S without a change."""
        self._start()
        self._job(job_id)
        while True:
            signal = self._signal(job_id)
            job = self.jobs[job_id]
            if job.status in FINISHED:
                yield "done", job.model_dump_json()
                return
            yield "progress", job.model_dump_json()
            try:
                await asyncio.wait_for(signal.wait(), HEARTBEAT_S)
            except TimeoutError:
                while not signal.is_set():
                    yield "ping", ""
                    try:
                        await asyncio.wait_for(signal.wait(), HEARTBEAT_S)
                    except TimeoutError:
                        continue

    async def workers(self, job_id: str) -> list[dict[str, int]]:
        """The processes of a job's training workers as they started: rank, pid and the epoch each
        started from (greater than 0 when it resumed from a checkpoint)."""
        self._job(job_id)
        return list(self._workers.get(job_id, []))

    async def check_health(self) -> None:
        # Serve calls this every few seconds: it also starts the jobs queued at startup.
        self._start()

    # ---- the queue ----

    def _job(self, job_id: str) -> TrainingJob:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFound(f"training job {job_id!r} does not exist; see GET /v1/training/jobs") from None

    def _signal(self, job_id: str) -> asyncio.Event:
        return self._signals.setdefault(job_id, asyncio.Event())

    def _record(self, job: TrainingJob) -> None:
        """Keep and persist a job's new state, and wake its event streams."""
        self.jobs[job.id] = job
        write_json(self.store.job(job.id), job.model_dump(mode="json"))
        self._signals.pop(job.id, asyncio.Event()).set()

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._pump()

    def _pump(self) -> None:
        while self.queue and len(self.runs) < self.args.max_running_jobs:
            job_id = self.queue.pop(0)
            run = _Run()
            self.runs[job_id] = run
            run.task = asyncio.get_running_loop().create_task(self._run(job_id, run))

    async def _run(self, job_id: str, run: _Run) -> None:
        job = self.jobs[job_id]
        self._record(job.model_copy(update={"status": "running", "started": job.started or time.time()}))
        monitor: asyncio.Task[None] | None = None
        try:
            key = await asyncio.to_thread(signing_key, self.args, self.store)
            run.channel = JobChannel.remote()  # type: ignore[attr-defined]
            if run.cancelled:  # cancelled before its channel existed: never start it
                return
            trainer = self._trainer(self.jobs[job_id], run.channel)
            monitor = asyncio.get_running_loop().create_task(self._monitor(job_id, run))
            result = await asyncio.to_thread(trainer.fit)
            if run.cancelled:
                return
            if result.checkpoint is None:
                raise RuntimeError("training ended without a checkpoint")
            with result.checkpoint.as_directory() as directory:
                record = await asyncio.to_thread(
                    publish_version, self.store, self.jobs[job_id], Path(directory), key, self.args.encryption_key_id
                )
            self._finish(job_id, "succeeded", version=record.version, report=record.report)
        except Exception as exc:
            if run.cancelled:
                return
            logger.exception("training: job %s failed", job_id)
            message = str(exc) if isinstance(exc, SigningKeyMissing) else failure_message(exc)
            self._finish(job_id, "failed", error=message)
        finally:
            if monitor is not None:
                monitor.cancel()
            if run.channel is not None:
                ray.kill(run.channel)
            self.runs.pop(job_id, None)
            if self.jobs[job_id].status in ("succeeded", "cancelled"):
                self._forget_checkpoints(job_id)
            self._pump()

    def _finish(self, job_id: str, status: str, **update: Any) -> None:
        job = self.jobs[job_id]
        progress = job.progress
        if progress is not None:
            progress = progress.model_copy(
                update={
                    "elapsed_s": time.time() - (job.started or job.created),
                    "eta_s": 0.0 if status == "succeeded" else None,
                }
            )
        self._record(job.model_copy(update={"status": status, "finished": time.time(), "progress": progress, **update}))

    async def _monitor(self, job_id: str, run: _Run) -> None:
        """Read the job's progress from its channel while it runs, recording each change."""
        last: Any = None
        while True:
            await asyncio.sleep(POLL_S)
            try:
                snapshot = await run.channel.snapshot.remote()
            except Exception:
                continue
            self._workers[job_id] = snapshot["workers"]
            job = self.jobs[job_id]
            if snapshot["progress"] is None or snapshot["progress"] == last or job.status != "running":
                continue
            last = snapshot["progress"]
            progress = Progress(**last, elapsed_s=time.time() - (job.started or job.created))
            self._record(job.model_copy(update={"progress": progress}))

    def _storage_path(self) -> str:
        path = self.args.storage_path
        if path is None:
            return str(self.store.checkpoints)
        return path if "://" in path else str(Path(path).expanduser().resolve())

    def _trainer(self, job: TrainingJob, channel: Any) -> Any:
        # Ray Train V2's classes by their own modules: `ray.train` and `ray.train.torch` export them
        # at run time, but their V1 imports are what mypy reads.
        from ray.train.v2.api.config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.v2.torch.torch_trainer import TorchTrainer

        use_gpu = self.args.use_gpu
        if use_gpu is None:
            use_gpu = ray.cluster_resources().get("GPU", 0) > 0  # type: ignore[no-untyped-call]
        scaling = ScalingConfig(
            num_workers=self.args.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": self.args.cpus_per_worker, **self.args.resources_per_worker},
        )
        run = RunConfig(
            name=job.id,
            storage_path=self._storage_path(),
            failure_config=FailureConfig(max_failures=self.args.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env=runtime_env(self.args.niceness),
        )
        config = {
            "request": job.request.model_dump(mode="json"),
            "dataset_dir": str(self.store.dataset(job.request.dataset)),
            "channel": channel,
            "threads": max(1, int(self.args.cpus_per_worker)),
        }
        return TorchTrainer(train_loop, train_loop_config=config, scaling_config=scaling, run_config=run)

    def _forget_checkpoints(self, job_id: str) -> None:
        """A finished run's checkpoints are of no more use (local storage; a URI's are left to its lifecycle rules)."""
        storage = self._storage_path()
        if "://" not in storage:
            shutil.rmtree(Path(storage) / job_id, ignore_errors=True)


def _check_base(base_model: str) -> None:
    """422 unless `base_model` is a registered classifier."""
    from models.registry import UnknownModel, get_entry

    try:
        entry = get_entry(base_model)
    except UnknownModel as exc:
        raise InvalidParameters(f"base_model: {exc}") from None
    if entry.task != Task.CLASSIFICATION:
        raise InvalidParameters(f"base_model: {base_model!r} is a {entry.task} model; fine-tuning needs a classifier")
