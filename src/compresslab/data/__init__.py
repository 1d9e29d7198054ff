"""Datasets as in-memory tensors behind one LightningDataModule."""

from compresslab.data.datamodule import TensorBatches, TensorDataModule, random_shift, split_train_val

__all__ = ["TensorBatches", "TensorDataModule", "random_shift", "split_train_val"]
