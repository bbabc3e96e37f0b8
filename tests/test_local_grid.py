"""LocalGrid behaves like Flower's in-memory grid: message checks, TTL, set_run, identity."""

from __future__ import annotations

import time

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.run import Run

from fedloom.engine import LocalGrid

from numpy_apps import INITIAL_WEIGHTS


def recording_app(seen: list, sleep_for: dict[int, float] | None = None) -> ClientApp:
    """Records (partition, message run id, context run id, run config, calls) per call;
    partition ``p`` sleeps ``sleep_for[p]`` seconds first."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        time.sleep((sleep_for or {}).get(partition, 0.0))
        calls = int(context.state.get("calls", ConfigRecord({"n": 0}))["n"]) + 1
        context.state["calls"] = ConfigRecord({"n": calls})
        seen.append({"partition": partition, "message_run": msg.metadata.run_id,
                     "context_run": context.run_id, "run_config": dict(context.run_config),
                     "calls": calls, "delivered_at": msg.metadata.delivered_at})
        return Message(RecordDict({"arrays": msg.content["arrays"],
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    return app


def train_messages(grid: LocalGrid, ttl: float | None = None) -> list[Message]:
    return [Message(RecordDict({"arrays": ArrayRecord(INITIAL_WEIGHTS)}), node_id, "train", ttl=ttl)
            for node_id in grid.get_node_ids()]


def test_push_refuses_what_flowers_in_memory_grid_refuses():
    grid = LocalGrid(recording_app([]), 2, seed=0)
    instruction = train_messages(grid)[0]
    grid.push_messages([instruction])
    with pytest.raises(ValueError, match="it is a reply"):
        reply = Message(RecordDict(), reply_to=instruction)
        grid.push_messages([reply])
    negative_ttl = train_messages(grid, ttl=-1.0)[0]
    with pytest.raises(ValueError, match="TTL is -1.0"):
        grid.push_messages([negative_ttl])
    delivered = train_messages(grid)[0]
    delivered.metadata.delivered_at = "2026-12-01T00:00:00+00:00"
    with pytest.raises(ValueError, match="already delivered"):
        grid.push_messages([delivered])


def test_a_reply_after_the_ttl_is_dropped_and_an_expired_message_not_delivered():
    seen: list = []
    grid = LocalGrid(recording_app(seen, sleep_for={0: 0.5}), 3, seed=0)
    replies = list(grid.send_and_receive(train_messages(grid, ttl=0.3), timeout=None))
    # node 0 replied after its message's TTL; nodes 1, 2 expired while node 0 ran
    assert replies == []
    assert [s["partition"] for s in seen] == [0]
    seen.clear()
    replies = list(grid.send_and_receive(train_messages(grid, ttl=5.0), timeout=None))
    assert sorted(grid.partition_id(r.metadata.src_node_id) for r in replies) == [0, 1, 2]
    assert all(s["delivered_at"] for s in seen)


def test_set_run_moves_every_node_context_to_the_new_run():
    seen: list = []
    grid = LocalGrid(recording_app(seen), 2, seed=0, run_config={"lr": 0.5})
    grid.send_and_receive(train_messages(grid))
    assert {s["calls"] for s in seen} == {1}
    run = Run.create_empty(run_id=4242)
    run.override_config = {"lr": 0.25}
    grid.set_run(run)
    assert grid.run.run_id == 4242
    seen.clear()
    grid.send_and_receive(train_messages(grid))
    assert [(s["message_run"], s["context_run"]) for s in seen] == [(4242, 4242)] * 2
    assert all(s["run_config"] == {"lr": 0.25} for s in seen)
    assert {s["calls"] for s in seen} == {1}  # a new run starts with fresh node state
    with pytest.raises(TypeError, match="Run"):
        grid.set_run(4242)


def test_two_grids_in_one_process_keep_their_own_run_identity():
    seen_a: list = []
    grid_a = LocalGrid(recording_app(seen_a), 2, seed=1)
    grid_b = LocalGrid(recording_app([]), 2, seed=2)  # built after A: must not take A's identity
    assert grid_a.run.run_id != grid_b.run.run_id
    strategy = FedAvg(min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0)
    strategy.start(grid=grid_a, initial_arrays=ArrayRecord(INITIAL_WEIGHTS), num_rounds=1)
    assert len(seen_a) == 2
    assert all(s["message_run"] == s["context_run"] == grid_a.run.run_id for s in seen_a)


def test_pull_messages_takes_the_flower_142_and_143_signatures():
    seen: list = []
    grid = LocalGrid(recording_app(seen), 3, seed=0)
    first, second, third = (list(grid.push_messages([m])) for m in train_messages(grid))
    assert [r.metadata.reply_to_message_id for r in grid.pull_messages(first)] == first
    assert [r.metadata.reply_to_message_id
            for r in grid.pull_messages(message_ids=second)] == second  # 1.42's keyword
    assert list(grid.pull_messages(reply_to_message_ids=[])) == []  # matches nothing
    assert [r.metadata.reply_to_message_id for r in grid.pull_messages()] == third  # no filter
    with pytest.raises(TypeError, match="only one"):
        grid.pull_messages(first, message_ids=first)
