"""Datasets as in-memory tensors behind one LightningDataModule."""

from compresslab.data.datamodule import StepBlock, TensorBatches, TensorDataModule, random_shift, split_train_val

__all__ = ["StepBlock", "TensorBatches", "TensorDataModule", "random_shift", "split_train_val"]
