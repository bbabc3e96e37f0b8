"""Differential privacy for fedloom runs: Flower's DP wrappers around a fedloom
strategy, with secret noise and sampling, and an (epsilon, delta) per round that
describes the sampler and the noise the run actually used.

The mechanism is DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning
Differentially Private Recurrent Language Models", https://arxiv.org/abs/1710.06963):
each sampled client's update ``w_k - g`` is clipped to L2 norm ``C``, the server
averages the clipped updates and adds Gaussian noise of std ``z * C / m`` (``z``: noise
multiplier, ``m``: clients sampled per round). Clipping runs on the server or, through
Flower's ``fixedclipping_mod``/``adaptiveclipping_mod``, on the clients. Adaptive
clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021, https://arxiv.org/abs/1905.03871)
moves ``C`` each round towards a quantile of the update norms, from a noised count.

Accounting: Rényi DP (Mironov 2017, https://arxiv.org/abs/1702.07476) of the Gaussian
mechanism subsampled without replacement (Wang, Balle, Kasiviswanathan 2019,
https://arxiv.org/abs/1808.00087), replace-one adjacency (one client's data replaced),
as Flower's ``flwr.serverapp.RdpAccountant`` computes it over Google's dp-accounting.

What is Flower's here, and what fedloom adds (Flower 1.42):

- Flower's: the DP wrappers (clipping, noise, adaptive norm update), the client mods,
  ``RdpAccountant``/``PrivacyConfig``/``GaussianPrivacyEvent``/``PrivacySpent``.
- fedloom's, because Flower's wrappers lack it: the noise from a generator seeded by
  OS entropy instead of numpy's global RNG (:mod:`.wrappers`); adaptive noise at the
  norm the updates were clipped to, C(t), not the updated C(t+1); an accountant fed
  with every release, including adaptive clipping's noised count and rounds that
  released only that count (Flower's wrappers account fixed clipping only, only
  without sampling amplification and only for ``FedAvg.aggregate_train``, which
  fedloom strategies replace); the round's real multiplier when fewer than ``m``
  updates were averaged (:func:`round_noise_multiplier`); secret client sampling
  (``FedloomStrategy(secure_sampling=True)``); a budget that withholds the release
  that would exceed ``dp.max_epsilon`` and stops the run cleanly
  (:class:`PrivacyRun`); the reply screen that keeps one bad client from voiding a
  round (:class:`ScreenReplies`).

What the epsilon covers: the released global models (and clipping norms) for a
uniform mean of clipped updates; :func:`accounting_problems` names strategies it does
not cover. Not covered: the client metrics averaged into the history (train loss,
validation accuracy), which clients report in the clear. See ``docs/privacy.md``.
"""

from __future__ import annotations

from fedloom.privacy.accounting import (
    SampledRdpAccountant,
    accounting_problems,
    full_round_multiplier,
    round_noise_multiplier,
)
from fedloom.privacy.run import INSECURE_WARNING, PrivacyRun
from fedloom.privacy.settings import ACCOUNTING, DP_MODES, PrivacySettings
from fedloom.privacy.wrappers import Release, ScreenReplies, client_mods, dp_wrapper

__all__ = [
    "ACCOUNTING",
    "DP_MODES",
    "INSECURE_WARNING",
    "PrivacyRun",
    "PrivacySettings",
    "Release",
    "SampledRdpAccountant",
    "ScreenReplies",
    "accounting_problems",
    "client_mods",
    "dp_wrapper",
    "full_round_multiplier",
    "round_noise_multiplier",
]
