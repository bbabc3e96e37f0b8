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


def test_a_run_merges_into_the_committed_digits_json_and_keeps_every_cell(tmp_path):
    path = tmp_path / "byzantine.json"
    path.write_text(json.dumps(COMMITTED))
    setting = {"task": "digits", **{k: COMMITTED["setting"][k] for k in byzantine.COMPARED if k != "task"},
               "attacks": {"lie_quality": "attack=none"}, "rows": {"weighted_server_quality": []}}
    old = byzantine.previous(path, setting, replace=False)
    new_cell = {"mean_final_accuracy": 0.5, "final_accuracy_per_seed": [0.5, 0.5, 0.5]}
    report = byzantine.merge(old, {
        "provenance": {**COMMITTED["provenance"], "commit": "abc"}, "setting": copy.deepcopy(setting),
        "results": {"weighted_server_quality": {"none": dict(new_cell)},
                    "weighted": {"lie_quality": dict(new_cell)}},
        "runs": [{"provenance": {"commit": "abc"}, "rows": ["weighted_server_quality", "weighted"]}]})
    byzantine.add_drops(report["results"])
    for row, cells in COMMITTED["results"].items():
        for attack, cell in cells.items():
            assert report["results"][row][attack]["final_accuracy_per_seed"] == cell["final_accuracy_per_seed"]
    weighted = report["results"]["weighted"]
    assert weighted["lie_quality"]["drop_vs_no_attack"] == pytest.approx(
        weighted["none"]["mean_final_accuracy"] - 0.5)
    assert len(report["runs"]) == 2
    table = readme_figures.byzantine(report)
    assert "| `weighted_server_quality` | 0.500 ± 0.000 | —" in table
    assert "Rows merged from 2 runs" in table

    other = {**setting, "rounds": 5, "seeds": [0]}
    with pytest.raises(SystemExit, match="another setting .*rounds: 100 there, 5 here"):
        byzantine.previous(path, other, replace=False)
    assert byzantine.previous(path, other, replace=True) is None
    fashion = {**setting, "task": "fashion"}
    with pytest.raises(SystemExit, match="task: 'digits' there, 'fashion' here"):
        byzantine.previous(path, fashion, replace=False)
