"""Datasets as in-memory tensors behind one LightningDataModule, and its factory from a job config."""

from compresslab.data.datamodule import (
    TensorBatches, TensorDataModule, build_datamodule, derived_seed, random_shift, split_train_val)

__all__ = ["TensorBatches", "TensorDataModule", "build_datamodule", "derived_seed", "random_shift",
           "split_train_val"]
