"""Datasets as in-memory tensors behind one LightningDataModule."""

from compresslab.data.datamodule import TensorBatches, TensorDataModule, derived_seed, random_shift, split_train_val

__all__ = ["TensorBatches", "TensorDataModule", "derived_seed", "random_shift", "split_train_val"]
