"""Data modules (installed as ``foley.data_modules``)."""

from foley.data_modules.foley_datamodule import FoleyDataModule, collate_examples, describe_batch

__all__ = ["FoleyDataModule", "collate_examples", "describe_batch"]
