"""Errors caused by what the user gave us (a config value, a data file, a checkpoint) or by the
machine (a full disk), and the interruption of a job.

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
    """Training produced a non-finite loss, weight or metric (too high a learning rate, most often)."""


class StorageError(CompresslabError):
    """A file could not be written (the disk is full, or the directory is not writable)."""


class Interrupted(BaseException):
    """The job was stopped from outside (Ctrl-C, SIGTERM, its launcher died). A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` on the way swallows it: it must stop the
    run or sweep after the job's record says `interrupted`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def nonfinite(what: str, where: str) -> DivergedError:
    return DivergedError(f"training diverged: {what} not finite {where}; lower "
                         "train.optimizer.lr or set trainer.gradient_clip_val")


def diverged(where: str) -> DivergedError:
    return nonfinite("the loss is", where)
