"""Download torchvision weights into the torch hub cache ($TORCH_HOME), for example at image build time.

    python -m models.prefetch resnet50:IMAGENET1K_V2 mobilenet_v3_large:DEFAULT

Every argument is checked before anything is downloaded. Files are read weights-only
(models.weights.fetch_torchvision), so a cached file the server cannot load fails here too.
Exit status: 0 all fetched, 1 a fetch failed, 2 a bad argument.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from torchvision.models import WeightsEnum

from models import weights as wsrc
from models.classifiers import resolve_torchvision_weights
from models.registry import UnknownModel, get_entry

EXIT_OK = 0
EXIT_FETCH_FAILED = 1
EXIT_USAGE = 2

USAGE = """\
usage: python -m models.prefetch MODEL:WEIGHTS [MODEL:WEIGHTS ...]

Download torchvision weights into the torch hub cache ($TORCH_HOME).
MODEL is a torchvision model name (resnet50); WEIGHTS is a weights name of
that model (IMAGENET1K_V2, ResNet50_Weights.IMAGENET1K_V2) or DEFAULT.
Prints one line per file: model, weights, cache file name, sha256.
"""


class UsageError(ValueError):
    """An argument is not `<torchvision model>:<weights>` naming a known model and weights."""


def parse_argument(arg: str) -> tuple[str, WeightsEnum]:
    """The model name and torchvision weights named by one `<model>:<weights>` argument."""
    key, sep, name = arg.partition(":")
    if not sep or not key or not name:
        raise UsageError(f"{arg!r}: expected <torchvision model>:<weights>, for example resnet50:IMAGENET1K_V2")
    try:
        entry = get_entry(key)
    except UnknownModel as exc:
        raise UsageError(f"{arg!r}: {exc}") from None
    if not entry.family.startswith("torchvision."):
        raise UsageError(f"{arg!r}: {key} is not a torchvision model (family {entry.family or 'unknown'})")
    try:
        return key, resolve_torchvision_weights(key, name)
    except wsrc.WeightsError as exc:
        raise UsageError(f"{arg!r}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Fetch every `<model>:<weights>` in `argv` into the hub cache; return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write(USAGE)
        return EXIT_USAGE
    if args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return EXIT_OK

    wanted: dict[WeightsEnum, tuple[str, str]] = {}  # weights -> (argument, model); duplicates fetched once
    bad = False
    for arg in args:
        try:
            key, weights = parse_argument(arg)
        except UsageError as exc:
            print(f"prefetch: {exc}", file=sys.stderr)
            bad = True
            continue
        wanted.setdefault(weights, (arg, key))
    if bad:
        print("prefetch: nothing fetched; run with --help for the argument syntax", file=sys.stderr)
        return EXIT_USAGE

    status = EXIT_OK
    for weights, (arg, key) in wanted.items():
        try:
            wsrc.fetch_torchvision(weights)
            path = wsrc.torchvision_cache_path(weights)
            digest = wsrc.sha256_file(path)
        except (wsrc.WeightsError, OSError) as exc:
            print(f"prefetch: {arg!r}: {exc}", file=sys.stderr)
            status = EXIT_FETCH_FAILED
            continue
        print(f"{key} {weights} {path.name} sha256:{digest}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
