"""compresslab: Hydra-configured experiments on neural-network compression."""

__version__ = "0.1.0"
