"""Real deployment: flower-superlink, flower-supernode and flwr run on 127.0.0.1.

Every slow test starts real Flower processes (no mocks) through
``fedloom.deploy.launch.LocalDeployment``, whose ``with`` block stops each process tree
it started, also when an assertion fails. The fast tests check the pieces the
processes rely on (certificates, node data files, config plumbing).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedloom.clients.client_app import VARIATE_RECORD
from fedloom.deploy.config import compose_experiment, split_overrides
from fedloom.deploy.credentials import make_node_key, make_tls_files
from fedloom.deploy.launch import LocalDeployment, format_node_config
from fedloom.deploy.node_data import read_site_file
from fedloom.deploy.processes import descendants
from fedloom.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]

THREE_NODES = "num_clients=3 clients_per_round=3 num_rounds=2 strategy=weighted"
SCAFFOLD_NODES = "num_clients=3 clients_per_round=3 num_rounds=3 strategy=scaffold"
FEDAVG_ROUND = "num_clients=3 clients_per_round=3 num_rounds=1 strategy=fedavg"


def start_nodes(deployment: LocalDeployment, num_nodes: int) -> None:
    deployment.start_superlink()
    for i in range(num_nodes):
        deployment.start_supernode(f"supernode-{i}", {"partition-id": i, "num-partitions": num_nodes})


def process_trees(deployment: LocalDeployment) -> list[int]:
    """Every process the deployment runs now, with all their descendants."""
    roots = [deployment.processes.process(n).pid for n in deployment.processes.names()]
    return [pid for root in roots for pid in (root, *descendants(root))]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.is_file() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


# ---------------------------------------------------------------------- processes
@pytest.mark.slow
def test_three_supernodes_train_weighted_average_like_simulation(tmp_path):
    from fedloom.experiment import run_experiment

    with LocalDeployment(tmp_path / "deploy", secure=True) as deployment:
        start_nodes(deployment, 3)
        result = deployment.run(THREE_NODES, tmp_path / "out", on_line=lambda line: None,
                                timeout=180)
        running = process_trees(deployment)
        assert len(running) >= 4  # SuperLink, its SuperExec, 3 SuperNodes (+ SuperExecs)
    assert not [pid for pid in running if alive(pid)], "processes outlived the deployment"

    records = result.records
    assert result.status == "finished:completed"
    assert [r["round"] for r in records] == [0, 1, 2]
    assert [r["num_clients"] for r in records[1:]] == [3, 3]
    assert records[2]["accuracy"] > records[0]["accuracy"] + 0.3
    saved = json.loads((tmp_path / "out" / "history.json").read_text())
    assert saved == records
    assert json.loads((tmp_path / "out" / "config.json").read_text())["strategy"]["_target_"] \
        == "fedloom.strategies.WeightedAverage"

    # Node i trains on simulated client i's data: the same config simulated in this
    # process gives the same global model, round by round.
    simulated = run_experiment(compose_experiment(THREE_NODES), tmp_path / "simulation")
    for deployed, local in zip(records, simulated, strict=True):
        assert deployed["accuracy"] == pytest.approx(local["accuracy"], abs=1e-6)
        assert deployed["loss"] == pytest.approx(local["loss"], rel=1e-5)


def forgetting_control_variates(app: ClientApp) -> ClientApp:
    """``app`` on nodes that lose their SCAFFOLD variate ``c_i`` before every round (as a
    node would if its ClientApp process kept it in memory): every round starts at ``c_i = 0``."""
    forgetful = ClientApp()

    @forgetful.train()
    def train(msg: Message, context: Context) -> Message:
        if VARIATE_RECORD in context.state:
            del context.state[VARIATE_RECORD]
        return app(msg, context)

    @forgetful.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return app(msg, context)

    return forgetful


@pytest.mark.slow
def test_scaffold_nodes_keep_their_control_variates_across_rounds(tmp_path):
    """SCAFFOLD for 3 rounds on 3 SuperNodes, each a separate process that starts a fresh
    ClientApp process per message: node ``i`` must keep its ``c_i`` in its ``context.state``
    (which the SuperNode holds between messages) for its local steps to be corrected by
    ``c - c_i``. Observed from outside: the deployment ends where the simulation does
    (whose nodes keep their contexts in this process), and not where a simulation whose
    nodes forget ``c_i`` every round ends; the server's ``c`` comes from the nodes'
    ``scaffold-delta-c``, and every reply carries twice FedAvg's arrays."""
    from fedloom.checkpoint import CHECKPOINT_FILE, FINAL_WEIGHTS_FILE, load_checkpoint, load_weights
    from fedloom.engine import LocalGrid
    from fedloom.experiment import builders, prepare_experiment, run_experiment
    from fedloom.records import arrayrecord_num_bytes, ndarrays_to_arrayrecord

    with LocalDeployment(tmp_path / "deploy", secure=False) as deployment:
        start_nodes(deployment, 3)
        result = deployment.run(SCAFFOLD_NODES, tmp_path / "out", on_line=lambda line: None,
                                timeout=300)
    deployed = result.records
    assert result.status == "finished:completed"
    assert [r["round"] for r in deployed] == [0, 1, 2, 3]
    assert [(r["num_clients"], r["num_rejected"]) for r in deployed[1:]] == [(3, 0)] * 3
    assert deployed[3]["accuracy"] > deployed[0]["accuracy"] + 0.3

    # Every reply carries the model and delta_c (both the model's shapes), every train
    # message the model and c: twice FedAvg's arrays each way, about twice its bytes up.
    keys, final = load_weights(tmp_path / "out" / FINAL_WEIGHTS_FILE)
    model_bytes = arrayrecord_num_bytes(ndarrays_to_arrayrecord(final, keys))
    fedavg = run_experiment(compose_experiment(FEDAVG_ROUND), tmp_path / "fedavg")[1]
    assert fedavg["payload_up"] == 3 * model_bytes
    for record in deployed[1:]:
        assert record["payload_up"] == record["payload_down"] == 2 * fedavg["payload_up"]
        assert 1.95 < record["bytes_up"] / fedavg["bytes_up"] < 2.05

    # The server's c after round 3: set from the nodes' delta_c, non-zero.
    checkpoint = load_checkpoint(tmp_path / "out" / CHECKPOINT_FILE)
    c_deployed = checkpoint["strategy"]["own"]["scaffold"]["c"]
    assert checkpoint["round"] == 3 and max(np.abs(c).max() for c in c_deployed) > 0

    # The same experiment simulated (node i = client i, each node's c_i in its context).
    simulated = run_experiment(compose_experiment(SCAFFOLD_NODES), tmp_path / "kept")
    for got, want in zip(deployed, simulated, strict=True):
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["payload_up"] == want["payload_up"]
    _, final_simulated = load_weights(tmp_path / "kept" / FINAL_WEIGHTS_FILE)
    c_simulated = load_checkpoint(tmp_path / "kept" / CHECKPOINT_FILE)["strategy"]["own"]["scaffold"]["c"]
    for got, want in zip([*final, *c_deployed], [*final_simulated, *c_simulated], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    # Nodes that forget c_i end elsewhere: the agreement above needs every node's own c_i.
    experiment = prepare_experiment(compose_experiment(SCAFFOLD_NODES), tmp_path / "forgotten")
    app = forgetting_control_variates(builders.build_client_app(experiment.settings))
    forgotten = experiment.start(LocalGrid(app, 3, seed=experiment.settings.seed))
    assert forgotten[1]["loss"] == pytest.approx(deployed[1]["loss"], rel=1e-5)  # c = c_i = 0
    _, final_forgotten = load_weights(tmp_path / "forgotten" / FINAL_WEIGHTS_FILE)
    gap = max(np.abs(a - b).max() for a, b in zip(final_forgotten, final))
    assert gap > 1e-3, f"forgetting c_i moved the final weights by only {gap:g}"


@pytest.mark.slow
def test_run_finishes_its_rounds_after_a_supernode_is_killed(tmp_path):
    # 2 of 3 nodes per round; the minimum (clients_per_round=2, min_valid_updates=1)
    # still allows rounds once a node is gone.
    overrides = ("num_clients=3 clients_per_round=2 num_rounds=3 min_valid_updates=1 "
                 "round_timeout=30")
    history = tmp_path / "out" / "history.json"
    with LocalDeployment(tmp_path / "deploy", secure=True) as deployment:
        start_nodes(deployment, 3)
        logs = {f"supernode-{i}": deployment.processes.log_path(f"supernode-{i}") for i in range(3)}
        killed: list[str] = []

        def received(name: str) -> int:
            return logs[name].read_text(errors="replace").count("Receiving: train message")

        def kill_a_node_in_round_two() -> None:
            # Once round 1 is recorded, the first node to receive a round-2 train
            # message dies before it can reply.
            counts = None
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                if counts is None:
                    if history.is_file() and len(json.loads(history.read_text())) >= 2:
                        counts = {name: received(name) for name in logs}
                else:
                    for name in logs:
                        if received(name) > counts[name]:
                            deployment.kill(name)
                            killed.append(name)
                            return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_a_node_in_round_two, daemon=True)
        killer.start()
        result = deployment.run(overrides, tmp_path / "out", on_line=lambda line: None,
                                timeout=300)
        killer.join(timeout=1)

    assert killed, "no SuperNode was seen receiving a round-2 message"
    records = result.records
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert records[1]["num_clients"] == 2
    assert records[2]["num_clients"] == 1  # the killed node's update never came
    assert records[3]["num_clients"] in (1, 2)
    assert records[3]["accuracy"] > records[0]["accuracy"]


@pytest.mark.slow
def test_unregistered_supernode_is_refused_with_authentication_on(tmp_path):
    with LocalDeployment(tmp_path / "deploy", secure=True) as deployment:
        deployment.start_superlink()
        intruder = deployment.start_supernode("intruder", {"partition-id": 0}, register=False)
        assert intruder.wait(timeout=60) != 0
        log = deployment.processes.log_text("intruder")
        assert "Failed to activate SuperNode" in log
        registered = deployment.start_supernode("registered", {"partition-id": 0})
        listing = lambda: json.loads(deployment.flwr("supernode", "ls", "--format", "json",  # noqa: E731
                                                     "fedloom-local"))["nodes"]
        wait_until(lambda: any(n["status"] == "online" for n in listing()), 60,
                   "the registered SuperNode to come online")
        assert registered.poll() is None
        assert len(listing()) == 1


def superlink_reply(url: str, ca_certificate: Path | None = None):
    """GET ``url`` from the SuperLink's HTTP API (Flower 1.42 serves Fleet, Control and
    Runtime APIs over HTTP on one port), trusting only ``ca_certificate`` for https."""
    import httpx

    verify = True if ca_certificate is None else ssl.create_default_context(cafile=str(ca_certificate))
    return httpx.get(url, verify=verify, timeout=10)


@pytest.mark.slow
def test_plaintext_client_cannot_connect_to_a_tls_superlink(tmp_path):
    import httpx

    with LocalDeployment(tmp_path / "deploy", secure=True) as deployment:
        address = deployment.start_superlink()
        # Plaintext HTTP gets no reply at all (the server expects a TLS handshake) ...
        with pytest.raises(httpx.RemoteProtocolError):
            superlink_reply(f"http://{address}/")
        # ... TLS trusting the deployment's CA reaches the API (FastAPI's 404 for "/") ...
        reply = superlink_reply(f"https://{address}/", deployment.tls.ca_certificate)
        assert (reply.status_code, reply.json()) == (404, {"detail": "Not Found"})
        # ... and TLS trusting another CA is refused: the server presents the CA's certificate.
        other_ca = make_tls_files(tmp_path / "other-ca").ca_certificate
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            superlink_reply(f"https://{address}/", other_ca)
        plain = deployment.start_supernode("plaintext", {"partition-id": 0}, plaintext=True,
                                           extra_args=["--max-retries", "2"])
        assert plain.wait(timeout=60) != 0
        log = deployment.processes.log_text("plaintext")
        assert "Failed to initialize the connection to the SuperLink" in log


@pytest.mark.slow
def test_plaintext_request_is_answered_by_an_insecure_superlink(tmp_path):
    """The plaintext check above can fail: without TLS the same request gets a reply."""
    with LocalDeployment(tmp_path / "deploy", secure=False) as deployment:
        address = deployment.start_superlink()
        reply = superlink_reply(f"http://{address}/")
        assert (reply.status_code, reply.json()) == (404, {"detail": "Not Found"})


@pytest.mark.slow
def test_launcher_stops_every_process_on_ctrl_c(tmp_path):
    run_dir = tmp_path / "run"
    output = (tmp_path / "launcher.log").open("w")
    launcher = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy.py"), "--run-dir", str(run_dir),
         "num_clients=2", "clients_per_round=2", "num_rounds=50"],
        stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
    )
    ours: list[int] = []
    try:
        wait_until(lambda: (run_dir / "history.json").is_file(), 120,
                   "the ServerApp to record round 0")
        ours += [pid for pid in descendants(launcher.pid) if alive(pid)]
        assert len(ours) >= 5  # SuperLink, SuperExec, ServerApp, 2 SuperNodes, ...
        launcher.send_signal(signal.SIGINT)
        try:
            code = launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("deploy.py did not exit within 60 s of SIGINT; its output ends with:\n"
                        + (tmp_path / "launcher.log").read_text()[-3000:])
        assert code != 0
        wait_until(lambda: not [pid for pid in ours if alive(pid)], 20,
                   "every process of the deployment to exit")
    finally:  # whatever failed above, leave nothing running
        for pid in [*descendants(launcher.pid), *ours]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()


# ---------------------------------------------------------------------- pieces
def test_server_certificate_names_the_addresses_and_chains_to_the_ca(tmp_path):
    from cryptography import x509

    files = make_tls_files(tmp_path, dns_names=["superlink.example.org"], ip_addresses=["10.0.0.5"])
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_certificate.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"superlink.example.org", "localhost"}
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"10.0.0.5", "127.0.0.1"}
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert files.server_key.stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError, match="give --ip an IP address"):
        make_tls_files(tmp_path, ip_addresses=["superlink.example.org"])


def test_node_key_is_an_openssh_ecdsa_pair(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        load_ssh_private_key,
        load_ssh_public_key,
    )

    private, public = make_node_key(tmp_path / "keys" / "site-a")
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()) == key.public_key()
    assert private.stat().st_mode & 0o077 == 0


def test_site_file_is_checked_with_messages_naming_the_fix(tmp_path):
    good = tmp_path / "site.npz"
    np.savez(good, x=np.ones((5, 3)), y=np.array([0, 1, 2, 1, 0]))
    x, y = read_site_file(good)
    assert x.dtype == np.float32 and x.shape == (5, 3) and y.dtype == np.int64
    np.savez(tmp_path / "keys.npz", features=np.ones((2, 3)))
    np.savez(tmp_path / "names.npz", x=np.ones((2, 3)), y=np.array(["cat", "dog"]))
    for name, message in [("missing.npz", "does not exist"), ("keys.npz", "needs x"),
                          ("names.npz", "integer class labels")]:
        with pytest.raises(DataError, match=message):
            read_site_file(tmp_path / name)


def test_overrides_compose_the_simulation_config_and_bad_ones_say_why():
    cfg = compose_experiment("strategy=fedavg num_rounds=7 dataset.test_fraction=0.3")
    assert cfg["num_rounds"] == 7 and cfg["strategy"]["_target_"].endswith("FederatedAveraging")
    assert split_overrides("a=1 b='x y'") == ["a=1", "b=x y"]
    with pytest.raises(ConfigError, match=r"'num_round' is not a fedloom setting \(did you mean num_rounds\?\)"):
        compose_experiment("num_round=3")
    with pytest.raises(ConfigError, match="Balance the quotes"):
        compose_experiment("dataset.path='oops")


def test_node_config_is_formatted_for_flower_supernode():
    from flwr.common.config import parse_config_args

    config = {"partition-id": 2, "num-partitions": 3, "data-path": "/my data/site's.npz"}
    assert parse_config_args([format_node_config(config)]) == config
    with pytest.raises(ConfigError, match="double quote"):
        format_node_config({"data-path": '/data/"x".npz'})
