"""The experiment config of a deployment: Hydra's ``compose`` over the ``conf/`` tree.

A deployment takes the same settings as ``simulate.py``: one string of Hydra overrides
(``"strategy=fedavg num_rounds=5"``), carried in Flower's run config under
``overrides``. The ServerApp, every SuperNode's ClientApp and the local launcher each
compose it here against the ``conf/`` tree that ships beside the ``fedloom`` package in
the Flower app bundle (FAB), so every process reads the one config the user wrote.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedloom.errors import ConfigError

__all__ = ["CONF_DIR", "compose_experiment", "split_overrides"]

#: ``conf/`` beside the ``fedloom`` package: in the repository and in the FAB.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def split_overrides(overrides: str | Sequence[str]) -> list[str]:
    """The override list of ``"a=1 b='x y'"`` (shell quoting), or a list as given."""
    if isinstance(overrides, str):
        try:
            return shlex.split(overrides)
        except ValueError as err:
            raise ConfigError(
                f"overrides={overrides!r} cannot be split into Hydra overrides ({err}). "
                "Balance the quotes, e.g. overrides=\"dataset.path='/data/my file.npz'\"."
            ) from None
    return [str(o) for o in overrides]


def compose_experiment(
    overrides: str | Sequence[str] = "", conf_dir: str | Path = CONF_DIR
) -> dict[str, Any]:
    """The resolved experiment config (plain dicts) of ``conf_dir/config.yaml`` + overrides.

    An unknown key or group option is a one-line :class:`ConfigError` naming the nearest
    known one (``settings.check_overrides``), and so is any other Hydra error; values are
    checked later by ``fedloom.experiment.settings``.
    """
    conf_dir = Path(conf_dir)
    if not (conf_dir / "config.yaml").is_file():
        raise ConfigError(
            f"no Hydra config tree at {conf_dir} (config.yaml is missing). The Flower app "
            "must ship conf/ beside fedloom/: run `flwr run` from the fedloom repository, "
            "whose pyproject.toml includes conf/**/*.yaml in the FAB."
        )
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from fedloom.experiment.settings import check_overrides

    arguments = split_overrides(overrides)
    check_overrides(arguments, conf_dir)  # misspelt keys and options, with the nearest one
    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=arguments)
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        message = str(err).replace("\n", " ")
        raise ConfigError(f"overrides {' '.join(arguments)!r}: {message}") from None
