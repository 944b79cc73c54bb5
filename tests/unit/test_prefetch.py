"""`python -m models.prefetch`: fills the torch hub cache, or says which argument failed and why."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import ResNet18_Weights

from models import weights as wsrc
from models.prefetch import EXIT_FETCH_FAILED, EXIT_OK, EXIT_USAGE, main

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cache_resnet18() -> Path:
    path = wsrc.torchvision_cache_path(ResNet18_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_prefetch_fails_naming_the_weights_when_offline_and_uncached(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["resnet18:IMAGENET1K_V1"]) == EXIT_FETCH_FAILED
    out, err = capsys.readouterr()
    assert out == ""
    assert "'resnet18:IMAGENET1K_V1'" in err
    assert "ResNet18_Weights.IMAGENET1K_V1" in err
    assert not wsrc.torchvision_cache_path(ResNet18_Weights.IMAGENET1K_V1).exists()


def test_prefetch_prints_the_cache_file_and_its_sha256_when_already_cached(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _cache_resnet18()
    assert path.is_relative_to(offline)
    assert main(["resnet18:IMAGENET1K_V1"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [f"resnet18 ResNet18_Weights.IMAGENET1K_V1 {path.name} sha256:{wsrc.sha256_file(path)}"]


def test_prefetch_fetches_once_when_arguments_name_the_same_weights(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _cache_resnet18()
    assert main(["resnet18:DEFAULT", "resnet18:ResNet18_Weights.IMAGENET1K_V1", "resnet18:IMAGENET1K_V1"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert path.name in lines[0]


def test_prefetch_fails_when_a_cached_file_is_not_a_plain_state_dict(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = wsrc.torchvision_cache_path(ResNet18_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    assert main(["resnet18:IMAGENET1K_V1"]) == EXIT_FETCH_FAILED
    out, err = capsys.readouterr()
    assert out == ""
    assert "'resnet18:IMAGENET1K_V1'" in err
    assert path.name in err


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("resnet18", r"expected <torchvision model>:<weights>"),
        ("resnet18:", r"expected <torchvision model>:<weights>"),
        (":IMAGENET1K_V1", r"expected <torchvision model>:<weights>"),
        ("resnt18:DEFAULT", r"unknown model 'resnt18'; did you mean resnet18"),
        ("resnet18:IMAGENET9K", r"unknown weights 'IMAGENET9K'; choose one of DEFAULT, IMAGENET1K_V1$"),
        ("resnet18:random", r"unknown weights 'random'"),
        ("digits_cnn:DEFAULT", r"digits_cnn is not a torchvision model"),
    ],
)
def test_prefetch_refuses_the_argument_when_it_is_not_a_known_model_and_weights(
    offline: Path, capsys: pytest.CaptureFixture[str], arg: str, message: str
) -> None:
    assert main([arg]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    first = err.splitlines()[0]
    assert first.startswith(f"prefetch: {arg!r}: ")
    assert re.search(message, first), first


def test_prefetch_downloads_nothing_when_any_argument_is_bad(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resnet18:IMAGENET1K_V1", "resnt18:DEFAULT", "resnet18"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "'resnt18:DEFAULT'" in err
    assert "'resnet18'" in err
    assert "nothing fetched" in err
    assert not (offline / "hub").exists()


def test_prefetch_prints_usage_when_given_no_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: python -m models.prefetch MODEL:WEIGHTS")


def test_prefetch_prints_usage_when_asked_for_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("usage: python -m models.prefetch")


@pytest.mark.slow  # a new Python process importing torch: seconds
def test_prefetch_module_exits_with_the_usage_status_when_run_without_arguments(offline: Path) -> None:
    env = {**os.environ, "TORCH_HOME": str(offline)}
    result = subprocess.run(
        [sys.executable, "-m", "models.prefetch"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == EXIT_USAGE
    assert result.stderr.startswith("usage: python -m models.prefetch")
