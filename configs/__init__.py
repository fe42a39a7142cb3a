"""LightningCLI configs shipped with foley, installed as the package ``foley.configs``.

The YAML files are package data: installed code reads them with
``importlib.resources.files("foley.configs")`` (``foley.demo`` does), while commands run
from the repository root keep naming them as ``configs/...``.
"""
