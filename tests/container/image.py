"""Build the serving image offline with podman: a local Debian base, a wheelhouse, the Dockerfile.

Nothing is pulled from an image registry. The base is Debian bookworm (minbase) with python3.11,
made by mmdebstrap and imported into podman, shaped like the Ray image the Dockerfile targets by
default (user ray, uid 1000, group users; a Python on PATH that user may write to). The project's
dependencies are resolved on the host against constraints.txt into a wheelhouse, torch as its CPU
build, and the image installs from that alone (`--no-index`).

Everything lives under build/container/ (git-ignored): podman's own storage (overlay), the base's
tarball and the wheelhouse, reused across test sessions while their inputs are unchanged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "container"
# What podman needs on this kind of host: runc (crun refuses hybrid cgroups), overlay storage (vfs
# is about ten times slower), and ulimits set explicitly (raising the defaults is not permitted).
ULIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
# HAProxy asks for twice its maxconn (Ray's default 4096) in open files, over the 4096 allowed here.
HOST_LIMITS_ENV = ("--env", "RAY_SERVE_HAPROXY_MAXCONN=1024")
# The Ray image's contract, which the Dockerfile relies on after FROM.
_BASE_CHANGES = (
    "ENV PATH=/home/ray/venv/bin:/usr/local/bin:/usr/bin:/bin",
    "ENV HOME=/home/ray",
    "USER 1000",
    "WORKDIR /home/ray",
    'CMD ["/bin/bash"]',
)
_BASE_PACKAGES = "python3.11,python3.11-venv,wget"
_BASE_HOOKS = (
    'chroot "$1" useradd --create-home --uid 1000 --gid users --shell /bin/bash ray',
    'chroot "$1" python3.11 -m venv /home/ray/venv',
    'chroot "$1" chown -R 1000:100 /home/ray',
    # KubeRay runs `bash -lc`, and Debian's /etc/profile resets PATH for a login shell.
    """echo 'PATH=/home/ray/venv/bin:$PATH' > "$1"/etc/profile.d/ray-venv.sh""",
    # Apt's lists and caches are of no use in an image.
    'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
)
MIRROR = "http://deb.debian.org/debian"
# Tagged with a digest of its recipe: a changed recipe builds a new base.
BASE_IMAGE = (
    "localhost/vision-maas-base:bookworm-py311-"
    + hashlib.sha256(repr((_BASE_PACKAGES, _BASE_HOOKS, _BASE_CHANGES, MIRROR)).encode()).hexdigest()[:12]
)


def missing_tools() -> list[str]:
    """The host tools this tier needs that are not on PATH."""
    return [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]


def podman_args() -> list[str]:
    """podman and its global options: storage and runtime of this tier's own."""
    return [
        "podman",
        "--root",
        str(CACHE / "storage"),
        "--runroot",
        str(CACHE / "run"),
        "--storage-driver",
        "overlay",
        "--runtime",
        "runc",
    ]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one podman command of this tier; its output is captured as text."""
    result = subprocess.run(
        [*podman_args(), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def build_base() -> None:
    """The local base image: Debian bookworm minbase with python3.11, shaped like the Ray image."""
    if image_exists(BASE_IMAGE):
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / "base.tar"
    hooks = [f"--customize-hook={hook}" for hook in _BASE_HOOKS]
    subprocess.run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            f"--include={_BASE_PACKAGES}",
            *hooks,
            "bookworm",
            str(tarball),
            MIRROR,
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    changes = [arg for change in _BASE_CHANGES for arg in ("--change", change)]
    podman("import", *changes, str(tarball), BASE_IMAGE, timeout=300)
    tarball.unlink()


def _pip() -> list[str]:
    return [str(REPO / ".venv" / "bin" / "python"), "-m", "pip"]


def _pip_config_dirs() -> list[Path]:
    """Directories of wheels pip is configured to look in (`find-links`)."""
    out = subprocess.run([*_pip(), "config", "list"], capture_output=True, text=True, check=True).stdout
    dirs: list[Path] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            dirs += [Path(v.removeprefix("file://")) for v in value.strip("'\"").split()]
    return [d for d in dirs if d.is_dir()]


def cpu_torch() -> str:
    """A requirement for the CPU build of torch: the constraints' pin as `+cpu` where pip can find it
    (PyTorch's CPU index configured), else the newest `+cpu` wheel in pip's find-links directories."""
    pins = _pins()
    wanted = f"torch=={pins['torch']}+cpu"
    with tempfile.TemporaryDirectory() as scratch:
        found = subprocess.run(
            [*_pip(), "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", scratch, wanted],
            capture_output=True,
            timeout=600,
            check=False,
        )
    if found.returncode == 0:
        return wanted
    versions = [
        m.group(1)
        for d in _pip_config_dirs()
        for wheel in d.glob("torch-*+cpu-cp311-*.whl")
        if (m := re.match(r"torch-([^-]+)-", wheel.name))
    ]
    if not versions:
        raise LookupError(f"no CPU build of torch: neither {wanted} nor a torch-*+cpu wheel in pip's find-links")
    return f"torch=={max(versions, key=lambda v: tuple(int(p) for p in v.split('+')[0].split('.')))}"


def _pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def requirements() -> list[str]:
    """What the Dockerfile installs before the code: the project's dependencies and its `image` extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["image"]]


def build_wheelhouse() -> Path:
    """Wheels of every dependency (torch's CPU build) and of the build backend, resolved on the host
    against constraints.txt; reused while the requirements and the constraints are unchanged."""
    torch = cpu_torch()
    recipe = (requirements(), (REPO / "constraints.txt").read_text(), torch, _without_cuda_op_registrations.__doc__)
    key = hashlib.sha256(repr(recipe).encode()).hexdigest()[:16]
    wheelhouse = CACHE / f"wheelhouse-{key}"
    if (wheelhouse / ".complete").exists():
        return wheelhouse
    for stale in CACHE.glob("wheelhouse-*"):
        shutil.rmtree(stale)
    wheelhouse.mkdir(parents=True)
    # The CPU torch replaces the pin of the CUDA build; torchvision is left to pip, which takes the
    # release made for that torch.
    constraints = wheelhouse / "constraints.txt"
    constraints.write_text(
        "".join(
            f"{torch}\n" if line.startswith("torch==") else f"{line}\n"
            for line in (REPO / "constraints.txt").read_text().splitlines()
            if not line.startswith("torchvision==")
        )
    )
    subprocess.run(
        [
            *_pip(),
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(wheelhouse),
            "-c",
            str(constraints),
            *requirements(),
            "setuptools>=69",
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    constraints.unlink()
    for wheel in wheelhouse.glob("torchvision-*.whl"):
        if "+cpu" not in wheel.name:
            _without_cuda_op_registrations(wheel)
    (wheelhouse / ".complete").touch()
    return wheelhouse


def _without_cuda_op_registrations(wheel: Path) -> None:
    """Make torchvision's CUDA build importable on CPU torch, the only torchvision this host has.

    Its C++ ops (`_C.so`) link torch's CUDA libraries, so on a CPU torch they do not load, which
    torchvision tolerates, except two fake-tensor registrations of ops from that library done
    unconditionally at import. They are guarded here like its other registrations
    (`extension._has_ops()`). vision-maas calls none of those ops (box_iou and FrozenBatchNorm2d
    are Python); PyTorch's CPU index has a torchvision whose ops load, where it can be reached.
    """
    target = "torchvision/_meta_registrations.py"
    guard = (
        "\n\ndef _register_fake_if_ops(name):\n"
        "    def wrapper(fn):\n"
        "        if torchvision.extension._has_ops():\n"
        "            torch.library.register_fake(name)(fn)\n"
        "        return fn\n\n"
        "    return wrapper\n"
    )
    patched = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(patched, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        text = src.read(target).decode()
        anchor = "import torchvision.extension  # noqa: F401\n"
        if anchor not in text or "@torch.library.register_fake(" not in text:
            raise RuntimeError(f"{wheel.name}: {target} is not laid out as expected")
        body = text.replace(anchor, anchor + guard, 1).replace(
            "@torch.library.register_fake(", "@_register_fake_if_ops("
        )
        data = body.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        for info in src.infolist():
            if info.filename == target:
                dst.writestr(info, data)
            elif info.filename == record_name:
                lines = [
                    f"{target},sha256={digest},{len(data)}" if line.startswith(f"{target},") else line
                    for line in src.read(record_name).decode().splitlines()
                ]
                dst.writestr(info, "\n".join(lines) + "\n")
            else:
                dst.writestr(info, src.read(info.filename))
    patched.replace(wheel)


def wheelhouse_id(wheelhouse: Path) -> str:
    """A digest of the wheelhouse's contents (names and sizes), the Dockerfile's WHEELHOUSE_ID."""
    listing = "".join(f"{p.name}:{p.stat().st_size}\n" for p in sorted(wheelhouse.glob("*.whl")))
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def build_image(tag: str, wheelhouse: Path, timeout: float = 1200) -> float:
    """Build the repository's Dockerfile on the local base from the wheelhouse; returns seconds."""
    started = time.monotonic()
    podman(
        "build",
        "--format",
        "docker",  # the OCI format drops HEALTHCHECK
        *ULIMITS,
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "--build-arg",
        f"WHEELHOUSE_ID={wheelhouse_id(wheelhouse)}",
        "--build-context",
        f"wheelhouse={wheelhouse}",
        "--tag",
        tag,
        str(REPO),
        timeout=timeout,
    )
    return time.monotonic() - started


def remove_build_leftovers() -> None:
    """Untagged images and the working containers of interrupted builds, in this tier's storage only."""
    if shutil.which("buildah"):
        storage = podman_args()[1:7]  # --root, --runroot, --storage-driver: the same storage
        subprocess.run(["buildah", *storage, "rm", "--all"], capture_output=True, timeout=300, check=False)
    podman("image", "prune", "--force", check=False, timeout=300)


def image_size(ref: str) -> int:
    """The image's size in bytes, as `podman images` reports it."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())


def remove_container(name: str) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        podman("rm", "--force", "--time", "0", name, check=False, timeout=60)
