"""A whole Flower deployment on this machine: one SuperLink, one SuperNode per client.

``python deploy.py [options] [hydra overrides]`` (or ``python -m fedloom.deploy.launch``)
runs an experiment the way a real federation does, with every party a separate
process talking over 127.0.0.1 through Flower's deployment engine:

1. makes a test CA and a server certificate (SAN ``IP:127.0.0.1``, ``DNS:localhost``)
   and one authentication key pair per SuperNode (unless ``--insecure``);
2. starts ``flower-superlink`` with TLS and ``--enable-supernode-auth`` on a free port;
3. registers every SuperNode's public key (``flwr supernode register``), then starts
   ``num_clients`` ``flower-supernode`` processes, node ``i`` with ``partition-id=i``
   (or ``data-path=<file i>`` with ``--node-data``);
4. ``flwr run``s the app of ``pyproject.toml`` with the overrides, streams the
   ServerApp's log (``flwr log --stream``), and checks that the run completed;
5. stops every process it started, with their children, on success, failure,
   exception or Ctrl-C.

Everything lands in one run directory (default ``outputs/deploy/<date>/<time>``):
``history.json``, ``config.json``, ``partition.json``, ``plot.png`` as in simulation,
plus ``logs/`` (one log per process), ``credentials/`` and one ``FLWR_HOME`` per party
under ``homes/`` (as if each were a separate machine).

Examples::

    python deploy.py num_clients=3 clients_per_round=3 num_rounds=5
    python deploy.py strategy=fedavg local_epochs=5 num_clients=4 clients_per_round=2
    python deploy.py --node-data a.npz --node-data b.npz num_clients=2 clients_per_round=2
    python deploy.py --insecure num_clients=3 clients_per_round=3     # no TLS, no node auth
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedloom.deploy.credentials import TlsFiles, make_node_key, make_tls_files
from fedloom.deploy.processes import Processes, exit_on_signals
from fedloom.errors import ConfigError, DataError, FedloomError

__all__ = ["APP_DIR", "DeploymentError", "LocalDeployment", "RunResult", "deploy", "main"]

#: The Flower app: the repository root, whose pyproject.toml declares [tool.flwr.app].
APP_DIR = Path(__file__).resolve().parents[2]

#: The ``flwr`` CLI's name for the local SuperLink (in the launcher's own FLWR_HOME).
CONNECTION = "fedloom-local"

#: Environment of every Flower process started here. SuperExec checks for new tasks
#: every second by default; a message waits for that poll on each SuperNode and for
#: the ServerApp, so a 0.1 s poll cuts that wait tenfold (benchmarks/deployment.py).
FLOWER_ENV = {
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}

#: SuperNodes on one machine share its cores: one TensorFlow thread pool each.
NODE_ENV = {"FEDLOOM_TF_THREADS": "1"}


class DeploymentError(FedloomError, RuntimeError):
    """A Flower process or the run failed; the message says which and where its log is."""


@dataclass(frozen=True)
class RunResult:
    """The outcome of :meth:`LocalDeployment.run`."""

    run_id: int
    status: str
    records: list[dict[str, Any]]
    output_dir: Path


class LocalDeployment:
    """A SuperLink and SuperNodes on 127.0.0.1, each in its own process tree.

    Use it as a context manager: leaving the block stops every process, whatever
    happened inside it.

    Args:
        run_dir: directory for logs, credentials and each party's ``FLWR_HOME``.
        secure: TLS on every connection and SuperNode authentication (default);
            ``False`` runs both plaintext and unauthenticated (``--insecure``).
        app_dir: the Flower app to run (default: this repository).
    """

    def __init__(self, run_dir: str | Path, *, secure: bool = True,
                 app_dir: str | Path = APP_DIR) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.secure = secure
        self.app_dir = Path(app_dir).resolve()
        self.processes = Processes(self.run_dir / "logs", env=flower_environment())
        self.tls: TlsFiles | None = None
        self.address: str | None = None
        self.cli_home = self.run_dir / "homes" / "cli"

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every process started here (SuperNodes first, the SuperLink last)."""
        self.processes.stop_all()

    # ------------------------------------------------------------------ SuperLink
    def start_superlink(self, timeout: float = 60.0) -> str:
        """Start ``flower-superlink`` on a free port; return its ``host:port``."""
        port = free_port()
        home = self._home("superlink")
        argv = ["flower-superlink", "--host", "127.0.0.1", "--port", str(port),
                "--disable-runtime-dependency-installation"]
        if self.secure:
            self.tls = make_tls_files(self.run_dir / "credentials" / "tls")
            argv += ["--ssl-ca-certfile", str(self.tls.ca_certificate),
                     "--ssl-certfile", str(self.tls.server_certificate),
                     "--ssl-keyfile", str(self.tls.server_key), "--enable-supernode-auth"]
        else:
            argv += ["--insecure"]
        self.processes.start("superlink", argv, env={"FLWR_HOME": str(home)}, cwd=home)
        self.address = f"127.0.0.1:{port}"
        self._wait_for_port(port, "superlink", timeout)
        self._write_cli_config()
        return self.address

    def _write_cli_config(self) -> None:
        """The ``flwr`` CLI's connection to this SuperLink, in the launcher's FLWR_HOME."""
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "{self.address}"']
        if self.tls is not None:
            lines.append(f"root-certificates = {json.dumps(str(self.tls.ca_certificate))}")
        else:
            lines.append("insecure = true")
        self.cli_home.mkdir(parents=True, exist_ok=True)
        (self.cli_home / "config.toml").write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------ SuperNodes
    def start_supernode(self, name: str, node_config: Mapping[str, Any], *,
                        register: bool = True, plaintext: bool = False,
                        extra_args: Sequence[str] = ()) -> subprocess.Popen:
        """Start ``flower-supernode`` ``name`` with ``node_config``.

        In a secure deployment the node gets its own key pair, registered with the
        SuperLink first unless ``register=False`` (an intruder, for tests).
        ``plaintext=True`` makes it dial without TLS whatever the SuperLink does.
        """
        if self.address is None:
            raise DeploymentError("start the SuperLink before any SuperNode.")
        home = self._home(name)
        argv = ["flower-supernode", "--superlink", self.address, "--port", str(free_port()),
                "--node-config", format_node_config(node_config)]
        if self.secure and not plaintext:
            key, public = make_node_key(self.run_dir / "credentials" / "nodes" / name)
            if register:
                self.flwr("supernode", "register", str(public), CONNECTION)
            argv += ["--root-certificates", str(self.tls.ca_certificate),
                     "--auth-supernode-private-key", str(key)]
        else:
            argv += ["--insecure"]
        return self.processes.start(name, [*argv, *extra_args],
                                    env={"FLWR_HOME": str(home), **NODE_ENV}, cwd=home)

    def kill(self, name: str) -> None:
        """SIGKILL SuperNode ``name`` and its ClientApp processes (a crashed site)."""
        self.processes.kill(name)

    # ------------------------------------------------------------------ runs
    def run(self, overrides: str, output_dir: str | Path, *,
            on_line: Callable[[str], None] = print, connect_timeout: float = 120.0,
            timeout: float | None = None) -> RunResult:
        """``flwr run`` the app with Hydra ``overrides``; stream its log; check the result.

        Raises:
            DeploymentError: the run did not complete (the message holds the end of
                the ServerApp's log), the SuperLink died, or ``timeout`` passed.
        """
        output_dir = Path(output_dir).resolve()
        run_config = self.run_dir / "run-config.toml"
        run_config.write_text(
            f"overrides = {json.dumps(overrides)}\noutput-dir = {json.dumps(str(output_dir))}\n"
            f"connect-timeout = {float(connect_timeout)}\n"
        )
        started = json.loads(self.flwr("run", str(self.app_dir), CONNECTION,
                                       "--run-config", str(run_config), "--format", "json"))
        if not started.get("success"):
            raise DeploymentError(f"flwr run did not start the app: {started}")
        run_id = int(started["run-id"])
        self._stream(run_id, on_line, timeout)
        status = self._status(run_id)
        if status != "finished:completed":
            log = self.flwr("log", str(run_id), CONNECTION, "--show", check=False)
            raise DeploymentError(
                f"run {run_id} ended with status {status!r}; the end of the ServerApp's "
                "log:\n" + "\n".join(log.rstrip().splitlines()[-15:])
            )
        records = json.loads((output_dir / "history.json").read_text())
        return RunResult(run_id, status, records, output_dir)

    def _stream(self, run_id: int, on_line: Callable[[str], None], timeout: float | None) -> None:
        """Pass the run's log lines to ``on_line`` until it ends; watch the processes.

        A SuperNode that exits is reported (the run may go on without it); a SuperLink
        that exits ends the run with an error."""
        stream = subprocess.Popen(
            ["flwr", "log", str(run_id), CONNECTION, "--stream"], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=self._cli_env(), start_new_session=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            for line in stream.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        deadline = None if timeout is None else time.monotonic() + timeout
        nodes = [n for n in self.processes.names() if n != "superlink"]
        try:
            while True:
                try:
                    line = lines.get(timeout=0.5)
                except queue.Empty:
                    line = ""
                if line is None:
                    return
                if line:
                    on_line(line)
                for name in [n for n in nodes if not self.processes.alive(n)]:
                    nodes.remove(name)
                    if name in self.processes.names():  # not stopped or killed on purpose
                        on_line(f"deploy: {name} exited with code "
                                f"{self.processes.process(name).returncode}; see "
                                f"{self.processes.log_path(name)}")
                if not self.processes.alive("superlink"):
                    raise DeploymentError(
                        "the SuperLink stopped during the run; see "
                        f"{self.processes.log_path('superlink')}"
                    )
                if deadline is not None and time.monotonic() > deadline:
                    self.flwr("stop", str(run_id), CONNECTION, check=False)
                    raise DeploymentError(f"run {run_id} did not finish within {timeout:g} s.")
        finally:
            stream.kill()
            stream.wait()

    def _status(self, run_id: int, timeout: float = 30.0) -> str:
        """The run's final ``status:sub-status`` (polls until it is ``finished``)."""
        deadline = time.monotonic() + timeout
        while True:
            listing = json.loads(self.flwr("ls", "--run-id", str(run_id), "--format", "json",
                                           CONNECTION))
            run = next(r for r in listing["runs"] if int(r["run-id"]) == run_id)
            if run["status"].startswith("finished") or time.monotonic() > deadline:
                return run["status"]
            time.sleep(0.5)

    # ------------------------------------------------------------------ helpers
    def flwr(self, *args: str, check: bool = True) -> str:
        """Run the ``flwr`` CLI against this deployment; return its stdout."""
        result = subprocess.run(["flwr", *args], capture_output=True, text=True,
                                env=self._cli_env(), timeout=120)
        if check and result.returncode != 0:
            raise DeploymentError(
                f"`flwr {' '.join(args)}` failed (exit code {result.returncode}):\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        return result.stdout

    def _cli_env(self) -> dict[str, str]:
        return {**flower_environment(), "FLWR_HOME": str(self.cli_home)}

    def _home(self, name: str) -> Path:
        home = self.run_dir / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        return home

    def _wait_for_port(self, port: int, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.processes.alive(name):
                raise DeploymentError(
                    f"{name} exited with code {self.processes.process(name).returncode} "
                    f"while starting:\n{self.processes.log_text(name)[-3000:]}"
                )
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise DeploymentError(
            f"{name} did not open port {port} within {timeout:g} s; see "
            f"{self.processes.log_path(name)}"
        )


def flower_environment() -> dict[str, str]:
    """This environment + :data:`FLOWER_ENV`, with this Python's ``bin`` first on ``PATH``:
    Flower's commands start each other by name (``flower-superexec``, ``flwr-clientapp``),
    and must find the ones installed beside this interpreter even in a shell where the
    virtual environment is not activated."""
    scripts = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {**os.environ, **FLOWER_ENV, "PATH": f"{scripts}{os.pathsep}{path}" if path else scripts}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def format_node_config(node_config: Mapping[str, Any]) -> str:
    """``--node-config`` text: ``key=value`` pairs, strings in TOML double quotes."""
    parts = []
    for key, value in node_config.items():
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, (int, float)):
            text = str(value)
        elif '"' in str(value):
            raise ConfigError(
                f"node config {key}={value!r}: Flower's --node-config cannot carry a value "
                "with a double quote; rename the file or directory."
            )
        else:
            text = json.dumps(str(value))
        parts.append(f"{key}={text}")
    return " ".join(parts)


def deploy(overrides: Sequence[str] = (), *, secure: bool = True,
           node_data: Sequence[str | Path] = (), run_dir: str | Path | None = None,
           on_line: Callable[[str], None] = print, timeout: float | None = None,
           ) -> tuple[list[dict[str, Any]], Path]:
    """Run the experiment of ``overrides`` on a local deployment; return its records
    and the run directory (which holds ``history.json``).

    ``num_clients`` SuperNodes are started: node ``i`` trains on partition ``i`` of the
    configured dataset, or on ``node_data[i]`` when files are given (then one per client).

    Raises:
        ConfigError, DataError: before any process starts, for bad settings.
        DeploymentError: a Flower process or the run failed.
    """
    from fedloom.deploy.config import compose_experiment
    from fedloom.experiment.settings import RunSettings

    settings = RunSettings.from_config(compose_experiment(list(overrides)), deployed=True)
    num_clients = settings.num_clients
    if node_data and len(node_data) != num_clients:
        raise ConfigError(
            f"{len(node_data)} --node-data files for num_clients={num_clients}: give one "
            "file per SuperNode, or set num_clients to the number of files."
        )
    files = [Path(f).expanduser().resolve() for f in node_data]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"--node-data file not found: {', '.join(missing)}.")
    if run_dir is None:
        run_dir = Path("outputs") / "deploy" / dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    with LocalDeployment(run_dir, secure=secure) as deployment:
        deployment.start_superlink()
        for i in range(num_clients):
            node_config = ({"data-path": str(files[i])} if files
                           else {"partition-id": i, "num-partitions": num_clients})
            deployment.start_supernode(f"supernode-{i}", node_config)
        result = deployment.run(shlex.join(overrides), run_dir, on_line=on_line,
                                timeout=timeout)
    return result.records, run_dir


def main(argv: Sequence[str] | None = None) -> int:
    """The ``deploy.py`` command line; returns the exit code (2: bad settings, 1: failed)."""
    parser = argparse.ArgumentParser(
        prog="deploy.py",
        description="Run a fedloom experiment on a local Flower deployment: one SuperLink "
                    "and num_clients SuperNodes on 127.0.0.1, TLS and node authentication "
                    "on. Takes the Hydra overrides of simulate.py.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. num_rounds=5")
    parser.add_argument("--insecure", action="store_true",
                        help="no TLS and no SuperNode authentication (local tests only)")
    parser.add_argument("--node-data", action="append", default=[], metavar="FILE",
                        help="a SuperNode's own .npz (x, y); repeat once per client")
    parser.add_argument("--run-dir", type=Path, help="default: outputs/deploy/<date>/<time>")
    parser.add_argument("--timeout", type=float, help="seconds before the run is stopped")
    args = parser.parse_args(argv)
    # Ctrl-C must stop the deployment even when this process inherited SIGINT as ignored
    # (a shell starts background jobs that way, and CI runners often do).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with exit_on_signals():
            records, run_dir = deploy(args.overrides, secure=not args.insecure,
                                      node_data=args.node_data, run_dir=args.run_dir,
                                      timeout=args.timeout)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DeploymentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process of the deployment was stopped", file=sys.stderr)
        return 130
    final = records[-1]
    print(f"final accuracy {final['accuracy']:.4f} after {final['round']} rounds; "
          f"history in {run_dir / 'history.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
