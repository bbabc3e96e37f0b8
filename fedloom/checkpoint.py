"""Checkpoints: the server state of a run, written atomically, read back to resume.

A checkpoint is one ``.npz`` file: every numpy array of the state (global weights,
server momentum, the numpy RNG key) as a member, plus a JSON manifest (round, RNG
states, strategy state, history, config) in which each array is a reference
``{"__ndarray__": i}``. It is written to a temporary file in the same directory,
flushed to disk, then renamed over the old one (``os.replace`` is atomic on POSIX),
so a run killed at any instant leaves either the previous checkpoint or the new one,
never a torn file. No pickle: loading a checkpoint cannot run code.

What a resumable run saves (see ``fedloom.experiment.runner``):

=============  ============================================================
key            content
=============  ============================================================
round          the last completed round
arrays         the global model after that round (``keys``, ``values``)
strategy       :func:`strategy_state`: sampling RNG, schedule (momentum) state,
               the state of wrappers around it (e.g. adaptive clipping norm)
random         :func:`global_random_state` (Python's and numpy's global RNGs);
               ``None`` in DP runs, whose noise must not be recoverable
history        the per-round records so far
privacy        ``PrivacyRun.state_dict()``: the accountant's releases (DP runs;
               never the noise generator, unless ``dp.insecure_reproducible``)
config         the run's resolved config
=============  ============================================================

Pure numpy and the standard library; no Flower import.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.errors import ConfigError

__all__ = [
    "CHECKPOINT_FILE",
    "FINAL_WEIGHTS_FILE",
    "FORMAT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "save_weights",
    "load_weights",
    "strategy_state",
    "load_strategy_state",
    "global_random_state",
    "set_global_random_state",
]

CHECKPOINT_FILE = "checkpoint.npz"
FINAL_WEIGHTS_FILE = "final_weights.npz"
FORMAT_VERSION = 1
_MANIFEST = "__manifest__"


# --------------------------------------------------------------------------- files
def _flatten(value: Any, arrays: list[np.ndarray]) -> Any:
    """``value`` as JSON-compatible data, each ndarray replaced by a reference."""
    if isinstance(value, np.ndarray):
        arrays.append(value)
        return {"__ndarray__": len(arrays) - 1}
    if isinstance(value, Mapping):
        return {str(k): _flatten(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_flatten(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"checkpoint state must hold dicts, lists, numbers, strings and numpy arrays; "
        f"received {type(value).__name__}: {value!r:.80}."
    )


def _unflatten(value: Any, arrays: Sequence[np.ndarray]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            return arrays[value["__ndarray__"]]
        return {k: _unflatten(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, arrays) for v in value]
    return value


def _write_atomically(path: Path, members: Mapping[str, np.ndarray]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            np.savez(file, **members)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)
    return path


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (nested dicts/lists of JSON values and numpy arrays) to ``path``
    atomically; returns the path."""
    arrays: list[np.ndarray] = []
    manifest = _flatten({"format": FORMAT_VERSION, **state}, arrays)
    members = {f"a{i}": np.asarray(a) for i, a in enumerate(arrays)}
    members[_MANIFEST] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    return _write_atomically(Path(path), members)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read what :func:`save_checkpoint` wrote.

    Raises:
        ConfigError: the file is missing, not a fedloom checkpoint, or of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"resume: no checkpoint at {path}. Resume a run directory written with "
            "checkpoint_every >= 1 (it holds checkpoint.npz after its first checkpoint)."
        )
    try:
        with np.load(path, allow_pickle=False) as members:
            manifest = json.loads(members[_MANIFEST].tobytes().decode())
            arrays = [members[f"a{i}"] for i in range(len(members.files) - 1)]
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"resume: {path} is not a readable fedloom checkpoint ({err}).") from err
    if manifest.get("format") != FORMAT_VERSION:
        raise ConfigError(
            f"resume: {path} has checkpoint format {manifest.get('format')!r}; this fedloom "
            f"reads format {FORMAT_VERSION}."
        )
    return _unflatten(manifest, arrays)


def save_weights(path: str | Path, keys: Sequence[str], arrays: Sequence[np.ndarray]) -> Path:
    """Write model weights as an ``.npz`` (member ``key`` = array, in model order),
    atomically. ``np.load(path)`` reads it back."""
    if len(keys) != len(arrays):
        raise ValueError(f"Expected one key per array; received {len(keys)} keys and {len(arrays)} arrays.")
    return _write_atomically(Path(path), {str(k): np.asarray(a) for k, a in zip(keys, arrays)})


def load_weights(path: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """``(keys, arrays)`` of a file written by :func:`save_weights`."""
    with np.load(path, allow_pickle=False) as members:
        return list(members.files), [members[k] for k in members.files]


# --------------------------------------------------------------------------- state
#: Attributes of Flower's DP wrappers that change during a run (adaptive clipping
#: moves its clipping norm every round).
_WRAPPER_ATTRIBUTES = ("clipping_norm",)


def strategy_state(strategy: Any) -> dict[str, Any]:
    """The resumable state of ``strategy`` and of every strategy it wraps.

    Uses ``strategy.state_dict()`` where it exists (fedloom strategies), the
    changing attributes of Flower's DP wrappers, and recurses into ``.strategy``
    (how Flower's wrappers and :class:`fedloom.privacy.ScreenReplies` hold theirs).
    """
    state: dict[str, Any] = {"class": type(strategy).__name__}
    if callable(getattr(strategy, "state_dict", None)):
        state["own"] = strategy.state_dict()
    for name in _WRAPPER_ATTRIBUTES:
        value = getattr(strategy, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            state[name] = float(value)
    inner = getattr(strategy, "strategy", None)
    if inner is not None:
        state["inner"] = strategy_state(inner)
    return state


def load_strategy_state(strategy: Any, state: Mapping[str, Any]) -> None:
    """Restore what :func:`strategy_state` returned into an identically built strategy.

    Raises:
        ConfigError: the strategy is not built like the checkpointed one.
    """
    if state.get("class") != type(strategy).__name__:
        raise ConfigError(
            f"resume: the checkpoint holds a {state.get('class')} strategy, the config "
            f"builds a {type(strategy).__name__}. Resume with the run's own config.json."
        )
    if "own" in state:
        strategy.load_state_dict(state["own"])
    for name in _WRAPPER_ATTRIBUTES:
        if name in state:
            setattr(strategy, name, state[name])
    if "inner" in state:
        load_strategy_state(strategy.strategy, state["inner"])


def global_random_state() -> dict[str, Any]:
    """The states of Python's ``random`` and numpy's legacy global RNG.

    fedloom itself never draws from them (its randomness is seeded explicitly); a
    Flower strategy or a user's code might.
    """
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": {"name": name, "keys": np.asarray(keys), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }


def set_global_random_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`global_random_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], np.asarray(numpy_state["keys"], dtype=np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
