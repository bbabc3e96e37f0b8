"""``partition=natural`` decides the number of clients: one per natural id of the data.

``conf/partition/natural.yaml`` sets ``num_clients: null``; the settings count the
dataset's natural clients (Shakespeare's roles, heart disease's hospitals, Synthetic's
devices). A ``num_clients`` given by the user must equal that count.
"""

from __future__ import annotations


import pytest

from conftest import CONF, config
from fedloom.data import HEART_DISEASE_HOSPITALS, shakespeare_roles
from fedloom.errors import ConfigError, DataError
from fedloom.experiment import RunSettings, builders
from fedloom.experiment.settings import check_overrides

TEMPEST = ["dataset=shakespeare", "partition=natural", "model=char_lstm", "dataset.plays=[the-tempest]"]


def test_shakespeare_has_one_client_per_role_without_num_clients():
    settings = RunSettings.from_config(config(*TEMPEST))
    roles = shakespeare_roles(plays=["the-tempest"], min_samples=64)
    assert settings.num_clients == len(roles)
    assert settings.clients_per_round == 10
    assert settings.to_dict()["num_clients"] == len(roles)  # config.json records the count
    assert RunSettings.from_config(settings.to_dict()) == settings
    _, clients = builders.federated_data(builders.data_key(settings))
    assert len(clients) == len(roles)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["dataset=heart_disease", "clients_per_round=4"], len(HEART_DISEASE_HOSPITALS)),
        (["dataset=synthetic", "dataset.num_devices=12"], 12),
        (["dataset=synthetic"], 30),
    ],
)
def test_other_natural_datasets_count_their_clients(overrides, expected):
    settings = RunSettings.from_config(config("partition=natural", *overrides))
    assert settings.num_clients == expected
    assert settings.strategy_sampling()["min_available_nodes"] == expected


def test_too_many_clients_per_round_names_the_natural_count():
    with pytest.raises(ConfigError, match=r"clients_per_round=10 is not allowed: it must be <= "
                                          r"num_clients=4 \(the data's natural clients\)\.$"):
        RunSettings.from_config(config("dataset=heart_disease", "partition=natural"))


def test_a_given_num_clients_still_counts():
    cfg = config("dataset=heart_disease", "partition=natural", "num_clients=4", "clients_per_round=4")
    assert RunSettings.from_config(cfg).num_clients == 4
    assert RunSettings.from_config(config("num_clients=20")).num_clients == 20  # dirichlet: as given


def test_a_given_num_clients_that_disagrees_with_the_natural_split_is_refused():
    settings = RunSettings.from_config(
        config("dataset=heart_disease", "partition=natural", "num_clients=5", "clients_per_round=4"))
    with pytest.raises(DataError, match=r"num_clients=5 but the natural split has 4 clients.*"
                                        r"num_clients=4, or num_clients=null"):
        builders.federated_data(builders.data_key(settings))


def test_num_clients_null_needs_a_natural_partition():
    with pytest.raises(ConfigError, match=r"num_clients=null \(one client per natural id\) needs "
                                          r"partition=natural; partition=dirichlet .* num_clients=100"):
        RunSettings.from_config(config("num_clients=null"))
    with pytest.raises(DataError, match="needs natural client ids but the dataset has none"):
        RunSettings.from_config(config("partition=natural"))  # digits has no natural clients


def test_command_line_check_reads_the_natural_partition_file():
    check_overrides(["partition=natural", "partition.scheme=natural"], CONF)
    with pytest.raises(ConfigError, match=r"conf/partition/natural\.yaml has no 'alpha'; its settings: scheme "):
        check_overrides(["partition=natural", "partition.alpha=0.5"], CONF)

