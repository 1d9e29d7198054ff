"""Errors caused by what the user gave us (a config value, a data file, a checkpoint).

A job that hits one of these fails with its one-line message and no traceback: the message itself
says what is wrong and how to fix it. Any other exception is a bug and is logged with its traceback.
"""


class CompresslabError(Exception):
    """Base class of the user-facing errors."""


class ConfigError(CompresslabError):
    """A config value that cannot work (out of range, wrong type, incompatible with the data)."""


class DataError(CompresslabError):
    """A data file that is missing, corrupt or unreachable."""


class CheckpointError(CompresslabError):
    """A checkpoint that is missing, corrupt, or for another model or dataset."""


class DivergedError(CompresslabError):
    """Training produced a non-finite loss (too high a learning rate, most often)."""


def diverged(where: str) -> DivergedError:
    return DivergedError(f"training diverged: the loss is not finite {where}; lower "
                         "train.optimizer.lr or set trainer.gradient_clip_val")
