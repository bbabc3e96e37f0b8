"""``benchmarks/readme_figures.py``: README figure blocks are rendered from the committed
JSONs, and ``--check`` names every block that differs, is unknown or is missing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "readme_figures.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import readme_figures  # noqa: E402

BLOCKS = tuple(readme_figures.RENDERERS)


def readme_with_blocks(results: Path, names=BLOCKS) -> str:
    parts = ["# project\n\nSome prose.\n"]
    for name in names:
        parts.append(f"<!-- figures:{name} -->\n{readme_figures.render(name, results)}<!-- /figures -->\n"
                     "Prose between blocks.\n")
    return "\n".join(parts)


def check(readme: Path, results: Path, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *(mode or ("--check",)), "--readme", str(readme),
                           "--results", str(results)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def results(tmp_path) -> Path:
    copy = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", copy)
    return copy


def test_every_committed_json_renders_and_a_readme_with_its_blocks_passes(tmp_path, results):
    readme = tmp_path / "README.md"
    readme.write_text(readme_with_blocks(results))
    result = check(readme, results)
    assert result.returncode == 0, result.stderr


def test_a_figure_that_no_longer_matches_its_json_fails_and_names_the_block(tmp_path, results):
    readme = tmp_path / "README.md"
    readme.write_text(readme_with_blocks(results))
    data = json.loads((results / "keras_training.json").read_text())
    data["results"]["c_fedloom"]["median_s"] *= 2  # a rerun changed the figure
    (results / "keras_training.json").write_text(json.dumps(data))
    result = check(readme, results)
    assert result.returncode == 1
    assert "block 'keras-training' differs from benchmarks/results/keras_training.json" in result.stderr
    assert "'simulation'" not in result.stderr  # only the block that differs is named


def test_write_rerenders_the_blocks_and_keeps_the_prose(tmp_path, results):
    readme = tmp_path / "README.md"
    text = readme_with_blocks(results)
    stale = text.replace("| fedloom `KerasTrainer.fit` | ", "| fedloom `KerasTrainer.fit` | 9")
    assert stale != text
    readme.write_text(stale)
    assert check(readme, results).returncode == 1
    assert check(readme, results, "--write").returncode == 0
    assert readme.read_text() == text
    assert check(readme, results).returncode == 0


def test_unknown_and_missing_blocks_fail(tmp_path, results):
    readme = tmp_path / "README.md"
    readme.write_text(readme_with_blocks(results, [n for n in BLOCKS if n != "deployment"])
                      + "<!-- figures:nonsense -->\nold\n<!-- /figures -->\n")
    result = check(readme, results)
    assert result.returncode == 1
    assert "block 'nonsense': unknown" in result.stderr
    assert "block 'deployment': no `<!-- figures:deployment -->`" in result.stderr


def test_seeded_runs_render_as_mean_and_sample_sd():
    data = {"workload": {"seeds": [0, 1, 2]}, "variants": {"fedloom-local": {"runs": [
        {"median_round_s": r, "startup_s": 3.0, "peak_tree_pss_bytes": 2**29, "peak_tree_rss_bytes": 2**30,
         "final_accuracy": a} for r, a in ((0.01, 0.90), (0.02, 0.91), (0.03, 0.92))]}}}
    text = readme_figures.simulation(data)
    # mean 0.02, sample sd 0.01; accuracy 0.91 +- 0.01; PSS 0.5 GiB, RSS 1 GiB
    assert "| 0.0200 ± 0.0100 | 3.0 ± 0.0 s | 0.50 ± 0.00 GiB | 1.00 ± 0.00 GiB | 0.9100 ± 0.0100 |" in text


def test_blocks_may_be_split_over_the_readme_and_the_docs(tmp_path, results):
    readme, faults = tmp_path / "README.md", tmp_path / "faults.md"
    readme.write_text(readme_with_blocks(results, [n for n in BLOCKS if n != "byzantine"]))
    faults.write_text(readme_with_blocks(results, ["byzantine"]))
    both = subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme), "--readme",
                           str(faults), "--results", str(results)], capture_output=True, text=True,
                          timeout=120)
    assert both.returncode == 0, both.stderr
    alone = check(readme, results)
    assert alone.returncode == 1 and "block 'byzantine': no" in alone.stderr
