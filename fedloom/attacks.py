"""Byzantine clients for simulations: model poisoning, data poisoning, lying metadata.

A fraction of the clients, chosen by the experiment seed (by partition id), are
attackers. There are three kinds of attack, and every one combines with lying metadata.

**Client-side model poisoning.** Each attacker trains honestly and then replaces its
update ``delta = w - g`` (``w`` its trained weights, ``g`` the global model it received)
before replying:

=============  ===========================================================  ========================
attack         sent weights                                                 from
=============  ===========================================================  ========================
``sign_flip``  ``g - scale * delta`` (pushes the model back up the loss)    Damaskinos et al. 2018;
                                                                            Li et al. 2019 (RSA)
``scaling``    ``g + scale * delta`` (x10 by default: one client            Bagdasaryan et al. 2020
               outweighs the rest of a plain mean)                          ("How To Backdoor FL")
``noise``      ``g + N(0, std^2)`` per weight, ignoring its training        Blanchard et al. 2017
                                                                            (Gaussian attack)
=============  ===========================================================  ========================

:meth:`AttackPlan.mod` is a Flower client mod (train messages only), so the attack runs
inside the unchanged ``ClientApp`` on any engine. Decisions and noise depend only on
``(seed, round, partition id)``: runs repeat exactly.

**Omniscient model poisoning** (``alie``, ``ipm``, ``minmax``, ``minsum``, ``mimic``;
:data:`OMNISCIENT`). The attackers see the honest updates of their round and all send
one crafted update (:mod:`fedloom.attack_updates`, which cites each paper). The
attackers' client mod only marks their replies (a ``ConfigRecord`` named
:data:`ATTACKER_RECORD`, the colluders' side channel); the server-side
:class:`fedloom.omniscient.OmniscientAttackGrid` waits for the round's replies, removes
the marks, and replaces the marked replies' weights with ``g + crafted delta``.

**Data poisoning** (``label_flip``, Tolpegin et al., ESORICS 2020): attackers
train honestly on labels ``y -> num_classes - 1 - y`` (:meth:`AttackPlan.client_data`,
applied where the client's data is loaded; training and validation labels alike).

**Lying metadata** (``lie_num_examples``, ``lie_quality``; with any attack, also
``none`` with ``fraction > 0``): the attackers' train replies report that
``num-examples`` / ``quality``, to inflate their weight in a weighted rule.

Hydra: ``python simulate.py attack=noise strategy=robust_median``, ``attack=alie``,
``attack=ipm attack.eps=100``, ``attack=alie attack.lie_num_examples=1e9``
(``conf/attack/``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from fedloom.errors import ConfigError
from fedloom.faults import chosen_clients, decision_rng, replace_arrays, train_round
from fedloom.records import arrayrecord_views

__all__ = ["ATTACKS", "OMNISCIENT", "ATTACKER_RECORD", "PERTURBATIONS", "AttackPlan", "flip_labels",
           "poison"]

LOGGER = logging.getLogger("fedloom")

#: Attacks computed by each attacker from its own update (:func:`poison`).
CLIENT_POISONING = ("sign_flip", "scaling", "noise")
#: Attacks crafted on the server side from the round's honest updates (:mod:`fedloom.omniscient`).
OMNISCIENT = ("alie", "ipm", "minmax", "minsum", "mimic")
ATTACKS = ("none", *CLIENT_POISONING, *OMNISCIENT, "label_flip")
#: Perturbation directions of min-max and min-sum (:func:`fedloom.attack_updates.perturbation_direction`).
PERTURBATIONS = ("std", "unit_vec", "sign")
#: Name of the ConfigRecord an omniscient attacker's reply carries until the server-side
#: :class:`fedloom.omniscient.OmniscientAttackGrid` removes it.
ATTACKER_RECORD = "fedloom.attacker"
_LIES = {"lie_num_examples", "lie_quality"}
_OPTIONS = {"none": set(), "sign_flip": {"scale"}, "scaling": {"scale"}, "noise": {"std"},
            "alie": {"z"}, "ipm": {"eps"}, "minmax": {"direction"}, "minsum": {"direction"},
            "mimic": set(), "label_flip": set()}
_ATTACK_STREAM = 0xB12A  # separates attacker choice and noise from other seeded streams


def poison(
    name: str,
    global_weights: list[np.ndarray],
    weights: list[np.ndarray],
    *,
    scale: float = 1.0,
    std: float = 1.0,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """The attacker's weights for an honest update ``weights`` from ``global_weights``
    (shapes and dtypes kept). Pure numpy."""
    out = []
    for g, w in zip(global_weights, weights):
        g64 = np.asarray(g, dtype=np.float64)
        delta = np.asarray(w, dtype=np.float64) - g64
        if name == "sign_flip":
            new = g64 - scale * delta
        elif name == "scaling":
            new = g64 + scale * delta
        elif name == "noise":
            new = g64 + (rng or np.random.default_rng(0)).normal(0.0, std, size=g64.shape)
        else:
            raise ConfigError(f"attack.name={name!r} is not allowed: poison() computes "
                              f"{', '.join(CLIENT_POISONING)}.")
        out.append(new.astype(np.asarray(w).dtype))
    return out


def flip_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Label flipping: ``y -> num_classes - 1 - y`` (shape and dtype kept). Pure numpy.

    Raises:
        ValueError: a label outside ``[0, num_classes)``.
    """
    y = np.asarray(labels)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"label flipping needs labels in [0, {num_classes}); received labels "
                         f"from {y.min()} to {y.max()}.")
    return (num_classes - 1 - y).astype(y.dtype, copy=False)


def _check_number(key: str, value: Any, *, optional: bool = False, positive: bool = False) -> None:
    if optional and value is None:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (positive and not value > 0):
        need = "a number > 0" if positive else "a finite number"
        hint = " (or null)" if optional else ""
        raise ConfigError(f"attack.{key}={value!r} is not allowed: it must be {need}{hint}.")


@dataclass(frozen=True)
class AttackPlan:
    """Which clients attack, and how.

    Args:
        name: one of :data:`ATTACKS`.
        num_clients: clients in the federation.
        seed: the experiment seed (chooses the attackers and seeds ``noise``).
        fraction: share of the clients that attack, in ``[0, 1)``.
        scale: factor of ``sign_flip`` and ``scaling``.
        std: standard deviation of ``noise``, per weight.
        z: ALIE's ``z`` (standard deviations below the mean); ``None``: Baruch et al.'s
            formula from the round's clients and attackers (:func:`fedloom.attack_updates.alie_z`).
        eps: IPM's ``eps`` (the attackers send ``-eps`` times the honest mean; Xie et al.
            use 0.1, which passes distance filters, and 100, which reverses the mean).
        direction: min-max / min-sum perturbation, one of :data:`PERTURBATIONS`.
        lie_num_examples: the ``num-examples`` the attackers report (``None``: the true one).
        lie_quality: the ``quality`` the attackers report (``None``: the true one).
    """

    name: str
    num_clients: int
    seed: int = 0
    fraction: float = 0.2
    scale: float = 1.0
    std: float = 1.0
    z: float | None = None
    eps: float = 0.1
    direction: str = "std"
    lie_num_examples: float | None = None
    lie_quality: float | None = None
    attackers: frozenset[int] = field(init=False)
    _flipped: dict = field(init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ConfigError(f"attack.name={self.name!r} is not allowed: use one of {', '.join(ATTACKS)}.")
        fraction = self.fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise ConfigError(f"attack.fraction={fraction!r} is not allowed: it must be in [0, 1).")
        for key in ("scale", "std", "eps"):
            _check_number(key, getattr(self, key), positive=True)
        _check_number("z", self.z, optional=True)
        _check_number("lie_num_examples", self.lie_num_examples, optional=True, positive=True)
        _check_number("lie_quality", self.lie_quality, optional=True)
        if self.direction not in PERTURBATIONS:
            raise ConfigError(f"attack.direction={self.direction!r} is not allowed: use one of "
                              f"{', '.join(PERTURBATIONS)}.")
        chosen = frozenset() if self.name == "none" and not self.lies else chosen_clients(
            self.num_clients, fraction, self.seed, _ATTACK_STREAM)
        object.__setattr__(self, "attackers", chosen)

    @classmethod
    def from_config(cls, section: Mapping[str, Any], num_clients: int, seed: int) -> AttackPlan:
        """Build from the ``attack`` config section (``name``, ``fraction`` and the
        attack's own option)."""
        options = dict(section)
        name = options.pop("name", "none")
        if name not in ATTACKS:
            raise ConfigError(f"attack.name={name!r} is not allowed: use one of {', '.join(ATTACKS)}.")
        fraction = options.pop("fraction", 0.0 if name == "none" else 0.2)
        unknown = sorted(set(options) - _OPTIONS[name] - _LIES)
        if unknown:
            allowed = ", ".join(sorted({"name", "fraction"} | _OPTIONS[name]))
            raise ConfigError(f"attack.{unknown[0]} is not a setting of attack {name!r}; its settings: "
                              f"{allowed}; with any attack: {', '.join(sorted(_LIES))}.")
        return cls(name, num_clients, seed, fraction, **options)

    def to_config(self) -> dict[str, Any]:
        """The ``attack`` config section that :meth:`from_config` turns back into this plan."""
        return {"name": self.name, "fraction": self.fraction,
                **{key: getattr(self, key) for key in sorted(_OPTIONS[self.name] | _LIES)}}

    @property
    def active(self) -> bool:
        return bool(self.attackers)

    @property
    def omniscient(self) -> bool:
        """Whether the attack is crafted on the server from the round's honest updates."""
        return self.name in OMNISCIENT

    @property
    def lies(self) -> bool:
        """Whether the attackers report false metadata."""
        return self.lie_num_examples is not None or self.lie_quality is not None

    def client_data(self, partition_id: int, data: Any, num_classes: int) -> Any:
        """``data`` (a :class:`fedloom.data.ClientData`) as client ``partition_id`` trains
        on it: with flipped training and validation labels for a ``label_flip``
        attacker (computed once per client), unchanged otherwise."""
        if self.name != "label_flip" or partition_id not in self.attackers:
            return data
        if partition_id not in self._flipped:
            self._flipped[partition_id] = dataclasses.replace(
                data, y_train=flip_labels(data.y_train, num_classes),
                y_val=flip_labels(data.y_val, num_classes))
        return self._flipped[partition_id]

    def mod(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Flower client mod: attackers poison their train replies (client-side attacks),
        mark them for the server-side omniscient attack, and lie about their metadata."""
        reply = call_next(msg, context)
        if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        partition_id = int(context.node_config.get("partition-id", -1))
        if partition_id not in self.attackers:
            return reply
        server_round = train_round(msg)
        if self.name in CLIENT_POISONING:
            sent = next(iter(msg.content.array_records.values()))
            record = next(iter(reply.content.array_records.values()))
            keys = list(record.keys())
            rng = decision_rng(self.seed, _ATTACK_STREAM, server_round, partition_id)
            weights = poison(self.name, arrayrecord_views(sent), arrayrecord_views(record, keys),
                             scale=self.scale, std=self.std, rng=rng)
            reply = replace_arrays(reply, weights, keys)
        elif self.omniscient:
            reply.content[ATTACKER_RECORD] = ConfigRecord({"partition-id": partition_id})
        if self.lies:
            self._lie(reply)
        LOGGER.debug("attack %s by client %d in round %d", self.name, partition_id, server_round)
        return reply

    def _lie(self, reply: Message) -> None:
        records = reply.content.metric_records
        if not records:
            return
        metrics = records["metrics"] if "metrics" in records else next(iter(records.values()))
        if self.lie_num_examples is not None:
            metrics["num-examples"] = int(self.lie_num_examples)
        if self.lie_quality is not None:
            metrics["quality"] = float(self.lie_quality)
