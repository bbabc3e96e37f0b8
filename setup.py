"""Packaging beyond what pyproject.toml can say: the repository's ``conf/`` tree ships in
the wheel as the package data ``fedloom/conf`` (one copy of the YAML files, at the root
where Hydra users and ``flwr run``'s FAB expect it). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["fedloom", "fedloom.*"]), "fedloom.conf"],
    package_dir={"fedloom.conf": "conf"},
    package_data={"fedloom.conf": ["*.yaml", "*/*.yaml"]},
)
