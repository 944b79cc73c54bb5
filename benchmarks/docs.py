"""docs/benchmarks.md's figures, generated from benchmarks/results/ (a test fails when the page is stale).

    python -m benchmarks.docs            # rewrite the page's generated blocks from the results files
    python -m benchmarks.docs --check    # exit 1 when the page differs from what the results give

The page's prose is written by hand and states no figure; every number sits in a block between
`<!-- generated: NAME -->` and `<!-- end generated -->`, made here from the results files.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import adaptive, backends, batchpolicy, report
from benchmarks.servers import SERVERS
from models.docs import cli, render_blocks

RESULTS = Path(__file__).resolve().parent / "results"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _f(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def run_command(settings: dict[str, Any], out: str | None) -> str:
    """The `python -m benchmarks.run` command line that repeats a run with these settings."""
    parts = ["python -m benchmarks.run"]
    for key in ("models", "sizes", "concurrency", "open_loop"):
        parts.append(
            f"--{key.replace('_', '-')} "
            + " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in settings[key])
        )
    if settings.get("servers") and list(settings["servers"]) != list(SERVERS):
        parts.append("--servers " + " ".join(settings["servers"]))
    parts.append(f"--repeats {settings['repeats']} --step-s {settings['step_s']:g}")
    if settings.get("raw_s"):
        parts.append(f"--raw-s {settings['raw_s']:g}")
    if settings.get("open_answers"):
        parts.append(f"--open-answers {settings['open_answers']}")
    if out:
        parts.append(f"--out {out}")
    return " ".join(parts)


def _runs(results: Path) -> list[tuple[dict[str, Any], dict[str, Any], str | None]]:
    """(case, settings, --out) of the main run, then of each quick pass under results/quick/."""
    found = []
    for path in [results / "results.json", *sorted((results / "quick").glob("*/results.json"))]:
        data = _load(path)
        out = None if path.parent == results else str(path.parent.relative_to(results.parents[1]))
        found += [(case, data["settings"], out) for case in data["cases"]]
    return found


def _label(case: dict[str, Any], settings: dict[str, Any]) -> str:
    return f"{case['model']} {case['size']} ({settings['repeats']} repeat{'s' if settings['repeats'] > 1 else ''})"


def machine_block(results: Path) -> str:
    """What the main run measured on, and the commands that repeat every run on the page."""
    data = _load(results / "results.json")
    m = data["machine"]
    lines = [
        f"Measured on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, GPU: {m['gpu'] or 'none'}; "
        f"Python {m['python']}, torch {m['torch']}; started {data['started']}. Reproduce:",
        "",
        "```bash",
    ]
    lines += [run_command(settings, out) for _, settings, out in _runs(results)]
    lines += ["```"]
    return "\n".join(lines) + "\n"


def servers_block(results: Path) -> str:
    """The main case: the raw ceiling and every server at saturation, at one client and at rest."""
    case = _load(results / "results.json")["cases"][0]
    best_raw = max(case["raw"], key=lambda r: r["images_per_s"])
    single = next(r for r in case["raw"] if r["batch"] == 1 and r.get("processes", 1) == 1)
    lines = [
        f"{case['model']}, {case['size']} JPEG:",
        "",
        "| | images/s at saturation (clients) | tail % | p50 ms at 1 client | p99 ms at saturation "
        "| server CPU-ms per image | cold start s | RSS GiB, all processes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| raw pipeline, batch {best_raw['batch']} x {best_raw.get('processes', 1)} process(es), "
        f"{best_raw['threads']} thread(s) each | {_f(best_raw['images_per_s'])} | | {_f(single['batch_p50_ms'])} "
        f"(1 image) | | {_f(best_raw['cpu_ms_per_image'])} | | |",
    ]
    for name, server in case["servers"].items():
        sat = report.saturation(server)
        one = report.at_concurrency(server, 1)
        lines.append(
            f"| {name} | {_f(sat['throughput'])} ({sat['step']:g}) | {_f(100 * sat['tail_share'])} "
            f"| {_f(one['p50_ms']) if one else '-'} | {_f(sat['p99_ms'], 0)} | {_f(sat['server_cpu_ms_per_image'])} "
            f"| {_f(server['cold_start_s'])} | {_f(sum(server['rss_bytes'].values()) / 2**30)} |"
        )
    return "\n".join(lines) + "\n"


def _generic(label: str) -> str:
    """A target's label without the peer's own p99 figure, so one row covers every case."""
    return re.sub(r" at p99 <= \d+ ms", " at its p99", label)


def targets_block(results: Path) -> str:
    """Every target of every run, one column per (model, size)."""
    runs = _runs(results)
    columns = [(_label(case, settings), dict((_generic(t), (v, bar, ok)) for t, v, bar, ok in report.targets(case)))
               for case, settings, _ in runs]  # fmt: skip
    rows = list(dict.fromkeys(name for _, found in columns for name in found))
    lines = ["| target | bar | " + " | ".join(label for label, _ in columns) + " |"]
    lines.append("|---|---|" + "---:|" * len(columns))
    for row in rows:
        bars = {found[row][1] for _, found in columns if row in found}
        shared = bars.pop() if len(bars) == 1 else None  # a bar that differs by model or run goes in each cell
        cells = [
            f"{found[row][0]:.2f}{'' if shared else f' ({found[row][1]})'} {'yes' if found[row][2] else 'no'}"
            if row in found
            else "-"
            for _, found in columns
        ]
        lines.append(f"| {row} | {shared or 'per column'} | " + " | ".join(cells) + " |")
    compared = [(_label(case, settings), report.comparisons(case)) for case, settings, _ in runs]
    names = list(dict.fromkeys(_generic(t) for _, found in compared for t, _ in found))
    if names:
        lines += ["", "| comparison (no target) | " + " | ".join(label for label, _ in compared) + " |"]
        lines.append("|---|" + "---:|" * len(compared))
        for name in names:
            cells = [next((f"{v:.2f}" for t, v in found if _generic(t) == name), "-") for _, found in compared]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def data_path_block(results: Path) -> str:
    """The shipped data path (HAProxy, gRPC between replicas) against Serve's default, side by side per run."""
    lines = [
        "| run | images/s at saturation: shipped / classic (ratio) | server CPU-ms per image: shipped / classic "
        "| p50 ms at 1 client: shipped / classic |",
        "|---|---:|---:|---:|",
    ]
    for case, settings, _ in _runs(results):
        servers = case["servers"]
        if "vision-maas" not in servers or "vision-maas-classic" not in servers:
            continue
        ours, classic = report.saturation(servers["vision-maas"]), report.saturation(servers["vision-maas-classic"])
        one, one_classic = (report.at_concurrency(servers[n], 1) for n in ("vision-maas", "vision-maas-classic"))
        p50 = f"{_f(one['p50_ms'])} / {_f(one_classic['p50_ms'])}" if one and one_classic else "-"
        lines.append(
            f"| {_label(case, settings)} | {_f(ours['throughput'])} / {_f(classic['throughput'])} "
            f"({ours['throughput'] / classic['throughput']:.2f}x) | {_f(ours['server_cpu_ms_per_image'])} / "
            f"{_f(classic['server_cpu_ms_per_image'])} | {p50} |"
        )
    if len(lines) == 2:
        return "No run on this page includes `vision-maas-classic`: add it to a run's `--servers` to compare.\n"
    return "\n".join(lines) + "\n"


def soak_block(results: Path) -> str:
    """Resident memory under a long open-loop load at half of the measured saturation."""
    soak = _load(results / "soak.json")
    load, samples, growth = soak["load"], soak["samples"], soak["growth"]
    minutes = load["seconds"] / 60
    return (
        f"`python -m benchmarks.soak --model {soak['model']} --minutes {minutes:g}`: saturation "
        f"{_f(soak['saturation'])} images/s ({soak['saturation_clients']} clients, from measured time), then {minutes:g} minutes of open-loop "
        f"load at {_f(load['rate'], 2)} images/s: {load['ok']} answers, {load['errors']} errors, p50 "
        f"{_f(load['p50_ms'], 0)} ms, p99 {_f(load['p99_ms'], 0)} ms. Resident memory after the first minute: "
        f"replicas {growth['replicas']:+.1%} ({samples[0]['replicas_bytes'] / 2**20:.0f} MiB at the start, "
        f"{samples[-1]['replicas_bytes'] / 2**20:.0f} MiB at the end), the whole server, Ray's processes and "
        f"HAProxy included, {growth['server']:+.1%} ({samples[-1]['total_bytes'] / 2**30:.1f} GiB); "
        f"cold start {_f(soak['cold_start_s'])} s.\n"
    )


def adaptive_block(results: Path) -> str:
    """Adaptive batching against fixed caps, as benchmarks.adaptive measured it."""
    data = _load(results / "adaptive.json")
    s = data["settings"]
    return (
        f"`python -m benchmarks.adaptive --target-p99-ms {s['target_p99_ms']:g} --fixed "
        f"{' '.join(str(n) for n in s['fixed'])} --rates {' '.join(f'{r:g}' for r in s['rates'])} "
        f"--seconds {s['seconds']:g} --repeats {s['repeats']}`: "
        f"{s['model']} {s['size']}, open-loop rates as fractions of the fixed cap "
        f"{max(s['fixed'])}'s saturation ({_f(data['saturation'])} images/s).\n\n"
        + adaptive.markdown(data["summary"], s["target_p99_ms"])
    )


def backends_block(results: Path) -> str:
    """Each inference backend's parity with eager and its raw throughput."""
    data = _load(results / "backends.json")
    return backends.markdown(data["parity"], data["throughput"])


def batch_policy_block(results: Path) -> str:
    """The batching policies on a simulated clock, as benchmarks.batchpolicy ran them."""
    return batchpolicy.markdown(_load(results / "batchpolicy.json"))


def fastpath_block(results: Path) -> str:
    """The fast-path measurements (benchmarks.fastpath writes them as markdown from its own JSON)."""
    return (results / "fastpath.md").read_text()


def cpu_block(results: Path) -> str:
    """Where the CPU goes, by process (benchmarks.cpu writes it as markdown from its own JSON)."""
    text = (results / "cpu.md").read_text()
    return text.split("\n", 2)[2].lstrip("\n")  # without its own title


def warmup_block(results: Path) -> str:
    """The first request after ready against the steady median, with and without warm-up."""
    data = _load(results / "warmup.json")
    s = data["settings"]
    lines = [
        f"`python -m benchmarks.warmup --models {' '.join(s['models'])} --repeats {s['repeats']} "
        f"--requests {s['requests']}`: {s['size']} JPEG, one request at a time; medians over "
        f"{s['repeats']} server starts (worst start in brackets). Target: first request at most "
        f"{data['target_first_over_p50']:g}x the steady p50.",
        "",
        "| model | measured on | warm-up | first request ms | steady p50 ms | first / p50 |",
        "|---|---|---|---:|---:|---:|",
    ]
    where = {"served": "the server (HTTP, ingress, model replica)", "replica": "the replica's code alone"}
    for r in data["summary"]:
        lines.append(
            f"| {r['model']} | {where[r['where']]} | {'on' if r['variant'] == 'warm' else 'off'} "
            f"| {_f(r['first_ms'])} | {_f(r['steady_p50_ms'])} "
            f"| {r['first_over_p50']:.2f}x ({r['worst_first_over_p50']:.2f}x) |"
        )
    return "\n".join(lines) + "\n"


BLOCKS: dict[str, Callable[[Path], str]] = {
    "machine": machine_block,
    "servers": servers_block,
    "targets": targets_block,
    "data-path": data_path_block,
    "soak": soak_block,
    "adaptive": adaptive_block,
    "backends": backends_block,
    "fastpath": fastpath_block,
    "batch-policy": batch_policy_block,
    "warmup": warmup_block,
    "cpu": cpu_block,
}


def render(page: str, results: Path = RESULTS) -> str:
    """`page` with every generated block made anew from `results`."""
    return render_blocks(page, BLOCKS, results)


def main() -> int:
    return cli(__doc__.splitlines()[0], PAGE, render, "python -m benchmarks.docs")


if __name__ == "__main__":
    sys.exit(main())
