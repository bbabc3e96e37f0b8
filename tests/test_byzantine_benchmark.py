"""``benchmarks/byzantine.py``'s bookkeeping: which rows its variants add, and that a run
merges into the committed JSON without losing a cell, or is refused for another setting."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import byzantine  # noqa: E402
import readme_figures  # noqa: E402

COMMITTED = json.loads((ROOT / "benchmarks" / "results" / "byzantine.json").read_text())


def test_variants_add_each_robust_hybrid_without_filter_with_momentum_and_server_quality():
    rows = byzantine.expand_rows(["weighted", "robust_median", "robust_trimmed"],
                                 ["nofilter", "momentum", "server_quality"])
    assert rows == ["weighted", "robust_median", "robust_trimmed",
                    "robust_median+nofilter", "robust_median+momentum", "robust_median+nofilter+momentum",
                    "robust_trimmed+nofilter", "robust_trimmed+momentum", "robust_trimmed+nofilter+momentum",
                    "robust_trimmed+server_quality",  # the median weighs nothing: no such row
                    "weighted_quality", "weighted_server_quality"]
    assert byzantine.row_overrides("robust_trimmed+nofilter+momentum", 0.9) == [
        "strategy=robust_trimmed", "strategy.max_norm_ratio=null", "client_momentum=0.9"]
    # every row's overrides compose into a config that parses
    from fedloom.experiment.settings import RunSettings

    for row in rows:
        settings = RunSettings.from_config(byzantine.compose(byzantine.row_overrides(row, 0.9)))
        assert ("nofilter" in row) == (settings.strategy.options.get("max_norm_ratio", 0) is None)
        assert settings.training.client_momentum == (0.9 if "momentum" in row else 0.0)
        assert settings.server_quality == row.endswith("server_quality")
    with pytest.raises(SystemExit, match="unknown variant 'nofiltre'"):
        byzantine.row_overrides("robust_trimmed+nofiltre", 0.9)


def test_filter_variant_is_the_norm_filter_before_a_plain_weighted_mean():
    assert byzantine.expand_rows(["weighted", "robust_trimmed"], ["filter"]) == [
        "weighted", "robust_trimmed", "weighted+filter"]
    from fedloom.experiment.settings import RunSettings

    settings = RunSettings.from_config(byzantine.compose(byzantine.row_overrides("weighted+filter", 0.9)))
    options = settings.strategy.options
    assert options["max_norm_ratio"] == 2.5 and options["norm_window"] == 5  # the hybrids' filter
    assert options["robust"] == "trimmed_mean" and options["beta"] == 0.0  # trims nothing
    assert options["weight_cap"] is None and options["bucket_size"] == 1
    assert options["weight_by"] == "num_examples"
    with pytest.raises(SystemExit, match="applies to 'weighted' only"):
        byzantine.row_overrides("robust_median+filter", 0.9)


def test_a_run_merges_into_the_committed_digits_json_and_keeps_every_cell(tmp_path):
    path = tmp_path / "byzantine.json"
    path.write_text(json.dumps(COMMITTED))
    setting = {"task": "digits", **{k: COMMITTED["setting"][k] for k in byzantine.COMPARED if k != "task"},
               "attacks": {"label_flip_x2": "attack=none"}, "rows": {"robust_trimmed+server_quality": []}}
    old = byzantine.previous(path, setting, replace=False)
    new_cell = {"mean_final_accuracy": 0.5, "final_accuracy_per_seed": [0.5, 0.5, 0.5]}
    report = byzantine.merge(old, {
        "provenance": {**COMMITTED["provenance"], "commit": "abc"}, "setting": copy.deepcopy(setting),
        "results": {"robust_trimmed+server_quality": {"none": dict(new_cell)},
                    "weighted": {"label_flip_x2": dict(new_cell)}},
        "runs": [{"provenance": {"commit": "abc"}, "rows": ["robust_trimmed+server_quality", "weighted"]}]})
    byzantine.add_drops(report["results"])
    for row, cells in COMMITTED["results"].items():
        for attack, cell in cells.items():
            assert report["results"][row][attack]["final_accuracy_per_seed"] == cell["final_accuracy_per_seed"]
    weighted = report["results"]["weighted"]
    assert weighted["label_flip_x2"]["drop_vs_no_attack"] == pytest.approx(
        weighted["none"]["mean_final_accuracy"] - 0.5)
    runs = len(COMMITTED["runs"]) + 1
    assert len(report["runs"]) == runs
    table = readme_figures.byzantine(report)
    assert "| `robust_trimmed+server_quality` | 0.500 ± 0.000 | —" in table
    assert f"Rows merged from {runs} runs" in table

    other = {**setting, "rounds": 5, "seeds": [0]}
    with pytest.raises(SystemExit, match="another setting .*rounds: 100 there, 5 here"):
        byzantine.previous(path, other, replace=False)
    assert byzantine.previous(path, other, replace=True) is None
    fashion = {**setting, "task": "fashion"}
    with pytest.raises(SystemExit, match="task: 'digits' there, 'fashion' here"):
        byzantine.previous(path, fashion, replace=False)


def _task(task: str, cells: dict) -> dict:
    """A byzantine JSON of ``task`` whose rows have ``{attack: [accuracy per seed]}``."""
    results = {row: {attack: {"mean_final_accuracy": sum(v) / len(v), "final_accuracy_per_seed": v}
                     for attack, v in attacks.items()} for row, attacks in cells.items()}
    return {"provenance": COMMITTED["provenance"], "results": results,
            "setting": {"task": task, "rounds": 50, "seeds": [0, 1, 2], "attacker_fraction": 0.2}}


def test_summary_names_only_the_rows_within_three_points_under_every_attack_on_every_task():
    digits = _task("digits", {
        "weighted": {"none": [0.91, 0.91, 0.91], "alie": [0.50, 0.50, 0.50], "ipm": [0.90, 0.90, 0.90]},
        "robust_a": {"none": [0.90, 0.90, 0.90], "alie": [0.88, 0.88, 0.88], "ipm": [0.875, 0.875, 0.875]},
        "robust_b": {"none": [0.90, 0.90, 0.90], "alie": [0.86, 0.86, 0.86], "ipm": [0.90, 0.90, 0.90]},
        "robust_c": {"none": [0.85, 0.85, 0.85], "alie": [0.85, 0.85, 0.85], "ipm": [0.85, 0.85, 0.85]}})
    fashion = _task("fashion", {
        "weighted": {"none": [0.80, 0.80, 0.80], "alie": [0.70, 0.70, 0.70], "ipm": [0.80, 0.80, 0.80]},
        "robust_a": {"none": [0.79, 0.79, 0.79], "alie": [0.78, 0.78, 0.78], "ipm": [0.78, 0.78, 0.78]},
        "robust_b": {"none": [0.79, 0.79, 0.79], "alie": [0.79, 0.79, 0.79], "ipm": [0.79, 0.79, 0.79]},
        "robust_c": {"none": [0.80, 0.80, 0.80], "alie": [0.80, 0.80, 0.80]}})  # a column missing
    text = readme_figures.byzantine_summary(digits, fashion)
    # robust_b loses 4 points to ALIE on digits; robust_c is 6 below weighted on digits
    # and lacks a column on Fashion-MNIST
    assert text.strip().endswith("on every task: `robust_a`.")
    assert "| digits | `robust_b` | 0.900 ± 0.000 | -1.0 | alie (-4.0) | 1 of 2 |" in text
    assert "| digits | `robust_c` | 0.850 ± 0.000 | -6.0 | alie (+0.0) | 2 of 2 |" in text
    assert "| fashion | `robust_c` | 0.800 ± 0.000 | +0.0 | alie (+0.0) | 1 of 1 (of 2 columns) |" in text
