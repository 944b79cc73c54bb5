"""The serving image's Dockerfile, checked statically (no Docker engine needed)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
APP_DIR = "/home/ray/app"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case) and its arguments on one line."""

    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile: continuation lines joined, comments and blank lines dropped."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):  # Docker drops these, inside continuations too
            continue
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        keyword, _, args = " ".join(parts).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    if parts:
        raise ValueError(f"line {start}: the Dockerfile ends inside a line continuation")
    return instructions


def assignments(args: str) -> dict[str, str]:
    """`NAME=value` pairs of an ARG or ENV instruction, quotes removed; a bare NAME maps to ''."""
    pairs = (word.partition("=") for word in shlex.split(args))
    return {name: value for name, _, value in pairs}


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    """The parsed repository Dockerfile."""
    return parse_dockerfile(DOCKERFILE.read_text())


def _index(instructions: list[Instruction], keyword: str, pattern: str) -> int:
    found = [i for i, ins in enumerate(instructions) if ins.keyword == keyword and re.search(pattern, ins.args)]
    assert found, f"no {keyword} instruction matches {pattern!r}"
    return found[0]


def _from_index(instructions: list[Instruction]) -> int:
    """The serving stage's FROM: the last one (the one before it names the optional wheelhouse)."""
    froms = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    assert len(froms) == 2, "two stages expected: the wheelhouse and the image"
    assert instructions[froms[0]].args == "scratch AS wheelhouse", instructions[froms[0]].args
    return froms[-1]


def _global_args(instructions: list[Instruction]) -> dict[str, str]:
    args: dict[str, str] = {}
    for ins in instructions[: _from_index(instructions)]:
        if ins.keyword == "FROM":
            continue
        assert ins.keyword == "ARG", f"line {ins.line}: only ARG may come before FROM"
        args.update(assignments(ins.args))
    return args


def _stage_args(instructions: list[Instruction]) -> dict[str, int]:
    """Build args declared after FROM, by name, with the index of their declaration."""
    start = _from_index(instructions)
    return {
        name: i
        for i, ins in enumerate(instructions)
        if i > start and ins.keyword == "ARG"
        for name in assignments(ins.args)
    }


def test_parser_joins_continuations_and_drops_comments_when_parsing() -> None:
    text = "# syntax comment\nARG A=1\n\nRUN echo a \\\n    # a comment inside\n    && echo b\nUSER 1000\n"
    assert parse_dockerfile(text) == [
        Instruction("ARG", "A=1", 2),
        Instruction("RUN", "echo a && echo b", 4),
        Instruction("USER", "1000", 7),
    ]
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("RUN echo \\\n")


def test_ray_version_default_equals_the_constraints_pin_when_building(instructions: list[Instruction]) -> None:
    pins = dict(
        line.split("==", 1)
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    )
    assert _global_args(instructions)["RAY_VERSION"] == pins["ray"]


def test_base_image_is_a_build_arg_defaulting_to_the_official_ray_image_when_building(
    instructions: list[Instruction],
) -> None:
    assert instructions[_from_index(instructions)].args == "${BASE_IMAGE}"
    base = _global_args(instructions)["BASE_IMAGE"]
    match = re.fullmatch(r"rayproject/ray:\$\{RAY_VERSION\}-(py\d+)-\$\{VARIANT\}", base)
    assert match, base
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert match.group(1) == pyproject["tool"]["ruff"]["target-version"]
    assert _global_args(instructions)["VARIANT"] == "cpu"


def test_variant_is_declared_again_in_the_stage_when_a_run_uses_it(instructions: list[Instruction]) -> None:
    uses = [i for i, ins in enumerate(instructions) if ins.keyword == "RUN" and "VARIANT" in ins.args]
    assert uses
    assert _stage_args(instructions)["VARIANT"] < min(uses)


def test_last_user_is_a_numeric_non_root_uid_when_the_container_starts(instructions: list[Instruction]) -> None:
    users = [ins for ins in instructions if ins.keyword == "USER"]
    assert users
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1].args)
    assert match, f"USER {users[-1].args} must be numeric so runAsNonRoot can verify it"
    assert int(match.group(1)) != 0


def test_project_sources_are_copied_owned_by_ray_when_building(instructions: list[Instruction]) -> None:
    copied: set[str] = set()
    for ins in instructions:
        if ins.keyword in ("COPY", "ADD"):
            assert ins.keyword == "COPY", f"line {ins.line}: use COPY, not ADD"
            words = shlex.split(ins.args)
            assert "--chown=ray:users" in words, f"line {ins.line}: files must belong to ray"
            sources, dest = [w for w in words if not w.startswith("--")][:-1], words[-1]
            assert dest.startswith(APP_DIR), f"line {ins.line}: copied to {dest}"
            copied.update(s.rstrip("/") for s in sources)
    assert {"models", "deployments", "pyproject.toml", "constraints.txt", "README.md"} <= copied


def test_dependencies_install_with_the_constraints_or_from_the_wheelhouse_alone_when_building(
    instructions: list[Instruction],
) -> None:
    install = instructions[_index(instructions, "RUN", r"pip install .*-r ")].args
    assert "--mount=type=bind,from=wheelhouse,target=/wheelhouse" in install
    assert 'source="--no-index --find-links /wheelhouse"' in install
    assert 'source="-c constraints.txt $torch_index"' in install
    assert re.search(r'cpu\) [^;]*--extra-index-url https://download\.pytorch\.org/whl/cpu"?\s*;;', install), install
    # What it installs: the project's dependencies and its image extra, read from pyproject.toml.
    assert "['dependencies'] + p['optional-dependencies']['image']" in install


def test_dependencies_install_before_the_code_is_copied_so_a_code_change_rebuilds_in_seconds(
    instructions: list[Instruction],
) -> None:
    deps = _index(instructions, "RUN", r"pip install .*-r ")
    copies = [i for i, ins in enumerate(instructions) if ins.keyword == "COPY"]
    early = {w.rstrip("/") for i in copies if i < deps for w in shlex.split(instructions[i].args)[1:-1]}
    assert early == {"pyproject.toml", "constraints.txt"}
    code = _index(instructions, "RUN", r"pip install --no-cache-dir --no-deps \$source \.")
    assert max(copies) < code
    assert "--mount=type=bind,from=wheelhouse,target=/wheelhouse" in instructions[code].args
    assert "WHEELHOUSE_ID" in _stage_args(instructions)  # a changed wheelhouse rebuilds both


def test_nothing_is_fetched_at_runtime_when_the_image_is_used(instructions: list[Instruction]) -> None:
    text = DOCKERFILE.read_text()
    assert "working_dir" not in text.lower()
    pipe_to_shell = re.compile(r"\b(curl|wget)\b[^;&]*\|\s*(sudo\s+)?(ba|z|da)?sh\b")
    for ins in instructions:
        assert not pipe_to_shell.search(ins.args), f"line {ins.line}: piping a download into a shell"


def test_torchvision_weights_build_arg_drives_prefetch_when_set(instructions: list[Instruction]) -> None:
    declared = _stage_args(instructions)
    assert "TORCHVISION_WEIGHTS" in declared
    assert assignments(instructions[declared["TORCHVISION_WEIGHTS"]].args)["TORCHVISION_WEIGHTS"] == ""
    prefetch = _index(instructions, "RUN", r"python -m models\.prefetch")
    run = instructions[prefetch].args
    assert re.search(r'if \[ -n "\$\{?TORCHVISION_WEIGHTS\}?" \]', run), run
    assert re.search(r"python -m models\.prefetch \$\{?TORCHVISION_WEIGHTS\b", run), run
    assert declared["TORCHVISION_WEIGHTS"] < prefetch
    assert _index(instructions, "RUN", r"pip install") < prefetch
    torch_home = _index(instructions, "ENV", r"\bTORCH_HOME=")
    assert assignments(instructions[torch_home].args)["TORCH_HOME"] == "/home/ray/.cache/torch"
    assert torch_home < prefetch


def test_serve_port_health_check_and_an_init_as_pid_1_when_run_on_its_own(instructions: list[Instruction]) -> None:
    assert "8000" in [port for ins in instructions if ins.keyword == "EXPOSE" for port in ins.args.split()]
    (health,) = [ins for ins in instructions if ins.keyword == "HEALTHCHECK"]
    assert "http://127.0.0.1:8000/-/healthz" in health.args
    # Exec form, so that dumb-init is PID 1 (KubeRay's pod command replaces both lines).
    (entrypoint,) = [ins for ins in instructions if ins.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint.args) == ["dumb-init", "--rewrite", "15:2", "--"]
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert [r.split(">")[0] for r in pyproject["project"]["optional-dependencies"]["image"]] == ["dumb-init"]
    (cmd,) = [ins for ins in instructions if ins.keyword == "CMD"]
    assert json.loads(cmd.args) == ["python", "-m", "deployments.container"]


def test_dockerignore_keeps_local_state_out_and_the_sources_in_when_building() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "tests", "benchmarks"} <= patterns
    assert not any(p.startswith("!") for p in patterns)
    for needed in (
        "contract",
        "models",
        "deployments",
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "models/weights",
    ):
        assert needed not in patterns
        assert not any(Path(needed).match(p) for p in patterns if "*" in p), needed
