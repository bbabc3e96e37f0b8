"""Byzantine clients for simulations: model-poisoning attacks on the update.

A fraction of the clients, chosen by the experiment seed, are attackers. Each trains
honestly and then replaces its update ``delta = w - g`` (``w`` its trained weights, ``g``
the global model it received) before replying:

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

Hydra: ``python simulate.py attack=noise strategy=robust_median`` (``conf/attack/``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from fedloom.errors import ConfigError
from fedloom.faults import chosen_clients, decision_rng, replace_arrays, train_round
from fedloom.records import arrayrecord_views

__all__ = ["ATTACKS", "AttackPlan", "poison"]

LOGGER = logging.getLogger("fedloom")

ATTACKS = ("none", "sign_flip", "scaling", "noise")
_OPTIONS = {"none": set(), "sign_flip": {"scale"}, "scaling": {"scale"}, "noise": {"std"}}
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
            raise ConfigError(f"attack.name={name!r} is not allowed: use one of {', '.join(ATTACKS)}.")
        out.append(new.astype(np.asarray(w).dtype))
    return out


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
    """

    name: str
    num_clients: int
    seed: int = 0
    fraction: float = 0.2
    scale: float = 1.0
    std: float = 1.0
    attackers: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ConfigError(f"attack.name={self.name!r} is not allowed: use one of {', '.join(ATTACKS)}.")
        fraction = self.fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise ConfigError(f"attack.fraction={fraction!r} is not allowed: it must be in [0, 1).")
        for key in ("scale", "std"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"attack.{key}={value!r} is not allowed: it must be a number > 0.")
        chosen = frozenset() if self.name == "none" else chosen_clients(
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
        unknown = sorted(set(options) - _OPTIONS[name])
        if unknown:
            allowed = ", ".join(sorted({"name", "fraction"} | _OPTIONS[name]))
            raise ConfigError(f"attack.{unknown[0]} is not a setting of attack {name!r}; its settings: {allowed}.")
        return cls(name, num_clients, seed, fraction, **options)

    def to_config(self) -> dict[str, Any]:
        """The ``attack`` config section that :meth:`from_config` turns back into this plan."""
        return {"name": self.name, "fraction": self.fraction,
                **{key: getattr(self, key) for key in sorted(_OPTIONS[self.name])}}

    @property
    def active(self) -> bool:
        return bool(self.attackers)

    def mod(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Flower client mod: attackers poison their train replies."""
        reply = call_next(msg, context)
        if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        partition_id = int(context.node_config.get("partition-id", -1))
        if partition_id not in self.attackers:
            return reply
        server_round = train_round(msg)
        sent = next(iter(msg.content.array_records.values()))
        record = next(iter(reply.content.array_records.values()))
        keys = list(record.keys())
        rng = decision_rng(self.seed, _ATTACK_STREAM, server_round, partition_id)
        weights = poison(self.name, arrayrecord_views(sent), arrayrecord_views(record, keys),
                         scale=self.scale, std=self.std, rng=rng)
        LOGGER.debug("attack %s by client %d in round %d", self.name, partition_id, server_round)
        return replace_arrays(reply, weights, keys)
