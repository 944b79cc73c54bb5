"""docs/benchmarks.md is generated from the results files: its figures are the files' figures."""

from __future__ import annotations

import pytest

from benchmarks import docs


def test_the_benchmarks_page_states_what_the_results_files_hold() -> None:
    page = docs.PAGE.read_text()
    assert docs.render(page) == page, "docs/benchmarks.md is stale: run python -m benchmarks.docs"


def test_a_page_naming_an_unknown_or_missing_block_is_refused() -> None:
    # How the blocks are replaced is models.docs.render_blocks, tested in tests/unit/test_models_docs.py.
    with pytest.raises(ValueError, match="generated blocks"):
        docs.render("<!-- generated: nonsense -->\n<!-- end generated -->\n")


def test_the_reproducing_command_repeats_the_runs_sweep_and_output_folder() -> None:
    settings = {"models": ["resnet18"], "sizes": ["640x480"], "concurrency": [1, 32], "open_loop": [0.5, 0.9],
                "repeats": 2, "step_s": 8.0, "raw_s": 8.0}  # fmt: skip
    assert docs.run_command(settings, "benchmarks/results/quick/x") == (
        "python -m benchmarks.run --models resnet18 --sizes 640x480 --concurrency 1 32 --open-loop 0.5 0.9 "
        "--repeats 2 --step-s 8 --raw-s 8 --out benchmarks/results/quick/x"
    )
    settings |= {"open_answers": 600}
    assert docs.run_command(settings, None).endswith("--step-s 8 --raw-s 8 --open-answers 600")
