"""Packaging beside pyproject.toml: the experiment configs ship in the wheel.

The YAML files stay in ``configs/`` at the top of the checkout (``pathseg train -c configs/...`` works there); the
wheel carries them as package data of ``pathseg.configs``, where :mod:`pathseg.engine.packaged` finds them. Every
other setting is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["pathseg", "pathseg.*"]) + ["pathseg.configs"],
    package_dir={"pathseg.configs": "configs"},
    package_data={"pathseg.configs": ["*.yaml", "**/*.yaml"]},
)
