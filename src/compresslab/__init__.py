"""compresslab: Hydra-configured experiments on neural-network compression."""

__version__ = "0.1.0"


def load_artifact(path):
    """The nn.Module stored in a compressed artifact (model.clz) written by a compressed job."""
    from compresslab.compression.export import load_artifact as load

    return load(path)
