"""docs/models.md's figures, generated from the training reports in models/weights/ (a test fails when the page is stale).

    python -m models.docs            # rewrite the page's generated blocks from the reports
    python -m models.docs --check    # exit 1 when the page differs from what the reports give

The page's prose is written by hand and states no measured figure; every one sits in a block
between `<!-- generated: NAME -->` and `<!-- end generated -->`, made here from
`models/weights/<name>.json` (and each weights file's size and sha256), the shifted tables
from `models/shifted.json`. `render_blocks` and `cli` are the mechanism itself, which
docs/benchmarks.md's generator (benchmarks/docs.py) shares.
Neither torch nor Ray is imported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "models" / "weights"
PAGE = ROOT / "docs" / "models.md"
SHIFTED = ROOT / "models" / "shifted.json"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)


def render_blocks(page: str, blocks: Mapping[str, Callable[[Path], str]], source: Path) -> str:
    """`page` with each generated block made anew by its function from `source`; the prose is kept."""
    names = [m["name"] for m in BLOCK.finditer(page)]
    if sorted(names) != sorted(blocks):
        raise ValueError(f"the page's generated blocks {sorted(names)} are not {sorted(blocks)}")
    return BLOCK.sub(lambda m: m.group(1) + blocks[m["name"]](source) + m.group(4), page)


def cli(description: str, page_path: Path, render: Callable[[str], str], command: str) -> int:
    """Rewrite `page_path` with `render`, or with --check exit 1 when it is stale (naming `command`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale; change nothing")
    args = parser.parse_args()
    page = page_path.read_text()
    fresh = render(page)
    if args.check:
        if fresh != page:
            print(f"{page_path.name} is stale: run {command}", file=sys.stderr)
            return 1
        return 0
    page_path.write_text(fresh)
    return 0


@dataclass(frozen=True)
class Bundled:
    """What a bundled model is, in words: the reports hold its figures, not these."""

    task: str
    items: str  # what one item of its held-out (and validation) set is
    weights_note: str = ""


BUNDLED = {
    "digits_cnn": Bundled("classification, 28x28 greyscale", "digits"),
    "digits_detector": Bundled("detection: a CenterNet-style net at stride 4", "scenes"),
    "digits_segmenter": Bundled("segmentation: a small U-Net, background + 10 digits", "scenes"),
    "digits_dcgan": Bundled(
        "generation: conditional DCGAN (projection discriminator with an auxiliary classifier)",
        "samples",
        "generator only",
    ),
    "digits_denoiser": Bundled("denoising autoencoder, 32-float code", "images"),
    "photo_denoiser": Bundled(
        "denoising: DnCNN-style residual net on 256x256 RGB, trained on `china.jpg` patches", "photo"
    ),
    "moving_digits_lstm": Bundled(
        "video classification: per-frame CNN into an LSTM, 8 motion directions, 16 frames", "clips"
    ),
}


def reports(weights: Path) -> dict[str, dict[str, Any]]:
    """Every training report in `weights`, in BUNDLED's order; a report without words here, or words without one, is refused."""
    found = {p.stem: p for p in weights.glob("*.json") if p.name != "MANIFEST.json"}
    if set(found) != set(BUNDLED):
        raise ValueError(f"reports {sorted(found)} are not the models models/docs.py describes {sorted(BUNDLED)}")
    loaded: dict[str, dict[str, Any]] = {}
    for name in BUNDLED:
        report: dict[str, Any] = json.loads(found[name].read_text())
        loaded[name] = report
    return loaded


def _count(text: str) -> int:
    """The number a report's description of a set starts with ("300 digit scenes (seed 2) ...")."""
    found = re.match(r"(\d+) ", text)
    if not found:
        raise ValueError(f"no count at the start of {text!r}")
    return int(found[1])


def _percent(rate: float) -> str:
    return f"{round(100 * rate, 2):g}%"


def _psnr(figures: dict[str, Any]) -> str:
    return (
        f"PSNR {figures['noisy_psnr_db']:.2f} dB noisy to {figures['restored_psnr_db']:.2f} dB restored "
        f"({figures['psnr_gain_db']:+.2f} dB)"
    )


def held_out(report: dict[str, Any], items: str) -> str:
    """The report's figure on held-out data, with the set it was measured on."""
    if "held_out_map50" in report:
        per_class = report["held_out_ap50_per_class"].values()
        return (
            f"mAP@0.5 (all-point AP as VOC 2010+, with COCO's greedy matching) {report['held_out_map50']:.3f} "
            f"on {report['held_out_scenes']} held-out {items} (AP per class {min(per_class):.2f} to {max(per_class):.2f})"
        )
    if "held_out_mean_iou" in report:
        per_class = report["held_out_iou"].values()
        return (
            f"mean IoU {report['held_out_mean_iou']:.3f} on {_count(report['held_out'])} held-out {items} "
            f"(per class {min(per_class):.3f} to {max(per_class):.3f})"
        )
    if "recognition_rate" in report:
        recognition = report["recognition"]
        reader = recognition["method"].split()[0]
        total = recognition["per_digit"] * len(recognition["labels"])
        return (
            f"`{reader}` reads the requested digit in {_percent(report['recognition_rate'])} of {total} {items} "
            f"({recognition['per_digit']} per digit)"
        )
    if "held_out_accuracy_by_format" in report:
        formats: dict[str, float] = report["held_out_accuracy_by_format"]
        if len(set(formats.values())) == 1:
            how = ", the same encoded as " + " and as ".join(f.upper() for f in formats if f != "raw")
        else:
            how = (
                " ("
                + ", ".join(f"{'raw frames' if f == 'raw' else f.upper()} {v:.2%}" for f, v in formats.items())
                + ")"
            )
        return f"accuracy {report['held_out_accuracy']:.2%} on {report['held_out_size']} held-out {items}{how}"
    if "held_out_accuracy" in report:
        return f"accuracy {report['held_out_accuracy']:.2%} on {report['held_out_size']} held-out {items}"
    figures = report.get("held_out")
    if isinstance(figures, dict) and "psnr_gain_db" in figures:
        sigma = figures.get("noise_sigma", report.get("noise_sigma"))
        if "images" in figures:
            where = f"on {figures['images']} held-out {items}"
        else:
            photo = re.findall(r"'([^']+)'", figures["image"])[0]  # load_sample_image('flower.jpg') ...
            where = f"on one {items} (`{photo}`)"
        return f"{_psnr(figures)} {where} at noise sigma {sigma:g}"
    raise ValueError(f"{report['model']}: no held-out figure models/docs.py knows how to state")


def _varied(report: dict[str, Any], key: str, form: str) -> str:
    """The figure on as many varied ones (any canvas, size, polarity, noise), where the run watched them."""
    return f"; {form.format(report[key])} on as many varied ones" if key in report else ""


def validation(report: dict[str, Any], items: str) -> str:
    """The figure training was watched on (a split of the training data), or '-' where there is none."""
    if "validation_map50" in report:
        return f"mAP@0.5 {report['validation_map50']:.3f} on {report['validation_scenes']} {items}" + _varied(
            report, "varied_validation_map50", "{:.3f}"
        )
    if "validation_mean_iou" in report:
        return f"mean IoU {report['validation_mean_iou']:.3f} on {_count(report['validation'])} {items}" + _varied(
            report, "varied_validation_mean_iou", "{:.3f}"
        )
    if "validation_accuracy_raw" in report:
        return (
            f"accuracy {report['validation_accuracy_raw']:.2%} on {report['validation_clips']} {items} (raw frames)"
            + _varied(report, "varied_validation_accuracy_raw", "{:.2%}")
        )
    if "validation_accuracy" in report:
        return f"accuracy {report['validation_accuracy']:.2%} on {report['split']['sizes']['validation']} {items}"
    figures = report.get("validation")
    if isinstance(figures, dict) and "psnr_gain_db" in figures:
        if "images" in figures:
            return f"{_psnr(figures)} on {figures['images']} {items}"
        return f"{figures['psnr_gain_db']:+.2f} dB on the validation strip of the training photo"
    return "-"


def _size(n_bytes: int) -> str:
    mb = n_bytes / 1e6
    return f"{mb:.2g} MB" if mb < 10 else f"{mb:.0f} MB"


def weights_cell(name: str, report: dict[str, Any], weights: Path, note: str) -> str:
    """The weights file, its size and version; refused when the report describes other weights than the file."""
    path = weights / f"{name}.safetensors"
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 != report["sha256"]:
        raise ValueError(f"{path.name} is not the file {name}.json reports (sha256 {report['sha256'][:12]})")
    return f"`{path.name}` ({_size(len(data))}, version `{sha256[:12]}`{', ' + note if note else ''})"


def bundled_block(weights: Path) -> str:
    """The bundled models: what each is, its weights, and its figure on held-out data."""
    lines = [
        "| name | task | weights (bundled, sha256-pinned, signed) | measured on held-out data |",
        "|---|---|---|---|",
    ]
    for name, report in reports(weights).items():
        what = BUNDLED[name]
        lines.append(
            f"| `{name}` | {what.task} | {weights_cell(name, report, weights, what.weights_note)} "
            f"| {held_out(report, what.items)} |"
        )
    return "\n".join(lines) + "\n"


def training_block(weights: Path) -> str:
    """How each bundled model was trained: its script, its split, what training watched, and how long it took."""
    lines = [
        "| name | trained by | digits: train / validation / test | validation figure (watched while training) "
        "| wall clock s | CPU s |",
        "|---|---|---:|---|---:|---:|",
    ]
    for name, report in reports(weights).items():
        script = Path("models") / "training" / f"train_{name}.py"
        if not (ROOT / script).is_file():
            raise ValueError(f"{name}: no training script {script}")
        sizes = report.get("split", {}).get("sizes")
        split = f"{sizes['train']} / {sizes['validation']} / {sizes['test']}" if sizes else "-"
        cpu = report.get("train_cpu_seconds")
        lines.append(
            f"| `{name}` | [`{script.name}`](../{script.as_posix()}) | {split} | {validation(report, BUNDLED[name].items)} "
            f"| {report['train_seconds']:.0f} | {'-' if cpu is None else f'{cpu:.0f}'} |"
        )
    return "\n".join(lines) + "\n"


METRICS = {
    "accuracy": "accuracy",
    "recall": "recall at score 0.5",
    "map_50": "mAP@0.5",
    "mean_iou": "mean IoU",
    "psnr_gain_db": "PSNR gain dB",
    "recognition_rate": "read as asked",
}


def shifted_results() -> dict[str, Any]:
    """The shifted suites' figures (models/shifted.json, written by `python -m models.evaluate --shifted`)."""
    results: dict[str, Any] = json.loads(SHIFTED.read_text())
    return results


def uncovered(entry: dict[str, Any], row: dict[str, Any]) -> list[str]:
    """The metrics of a shifted-suite row under the model's floor: a shift the model does not cover."""
    return [metric for metric, floor in entry["floors"].items() if row[metric] < floor]


def _figure(metric: str, value: float) -> str:
    return f"{value:+.2f}" if metric == "psnr_gain_db" else f"{value:.3f}"


def shifted_block(weights: Path) -> str:
    """Per bundled model: its held-out figure beside its figure on every shift of its suite, with its floors."""
    results = shifted_results()
    found = reports(weights)
    baseline = results.get("baseline", {})
    before = baseline.get("models", {})
    out: list[str] = []
    for name, entry in results["models"].items():
        report = found[name]
        if entry["weights_sha256"] != report["sha256"]:
            raise ValueError(f"models/shifted.json measured other {name} weights than {name}.json reports")
        floors = entry["floors"]
        metrics = list(floors)
        out.append(f"**`{name}`**: in distribution {held_out(report, BUNDLED[name].items)}.")
        out.append(
            "Floors: "
            + ", ".join(f"{METRICS[m]} >= {floor:g}" for m, floor in floors.items())
            + f"; measured in {entry['seconds']:.0f} s."
        )
        out.append("")
        columns = [METRICS[m] for m in metrics]
        old = {row["shift"]: row for row in before.get(name, {}).get("shifts", [])}
        out.append("| shift | pictures | " + " | ".join(columns) + (" | before |" if old else " |") + " covered |")
        out.append("|---|---|" + "---:|" * len(columns) + ("---|" if old else "") + "---|")
        for row in entry["shifts"]:
            figures = " | ".join(_figure(m, row[m]) for m in metrics)
            was = old.get(row["shift"])
            then = f" {' / '.join(_figure(m, was[m]) for m in metrics)} |" if was else (" - |" if old else "")
            missing = uncovered(entry, row)
            covered = (
                "yes" if not missing else "**no**: " + ", ".join(f"{METRICS[m]} {_figure(m, row[m])}" for m in missing)
            )
            out.append(f"| `{row['shift']}` | {row['what']} ({row['samples']}) | {figures} |{then} {covered} |")
        out.append("")
    if before:
        out.append(f"Before: {baseline['measured']}.")
    return "\n".join(out).rstrip("\n") + "\n"


BLOCKS: dict[str, Callable[[Path], str]] = {
    "bundled": bundled_block,
    "training": training_block,
    "shifted": shifted_block,
}


def render(page: str, weights: Path = WEIGHTS) -> str:
    """`page` with every generated block made anew from the reports in `weights`."""
    return render_blocks(page, BLOCKS, weights)


def main() -> int:
    return cli(__doc__.splitlines()[0], PAGE, render, "python -m models.docs")


if __name__ == "__main__":
    sys.exit(main())
