"""A job's training and evaluation as requests, so that one job or a stack of jobs can serve them.

A method's `steps(job)` is a generator: it builds its models and callbacks itself and `yield`s a
`Fit` or an `Evaluate` whenever it needs one trained or tested, receiving the result back::

    fitted = yield Fit(cfg, module, dm, out_dir, epochs, loggers, callbacks)
    scores = yield Evaluate(cfg, module, dm)

`execute` serves the requests one by one (a job on its own); the stacked launcher serves the same
request of K jobs at once with one batched model (compresslab.stack_runner). An error raised while
serving a request is thrown back into the generator at its `yield`, so a job's own error handling
sees it exactly as if it had called `training.fit` itself.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Fit:
    """Train `module` on `dm` for `epochs` (training.fit's arguments)."""
    cfg: Any
    module: Any
    dm: Any
    out_dir: Path
    epochs: int
    loggers: Sequence = ()
    callbacks: Sequence = ()
    checkpoints: bool = True

    def run(self) -> dict:
        from compresslab.training import fit

        return fit(self.cfg, self.module, self.dm, self.out_dir, self.epochs, self.loggers,
                   self.callbacks, self.checkpoints)


@dataclass
class Evaluate:
    """Test accuracy and loss of `module` on `dm`'s test split (training.evaluate's arguments)."""
    cfg: Any
    module: Any
    dm: Any

    def run(self) -> dict:
        from compresslab.training import evaluate

        return evaluate(self.cfg, self.module, self.dm)


Request = Fit | Evaluate


def execute(steps: Generator) -> Any:
    """Serve every request of `steps` on its own, in order; return what the generator returns."""
    try:
        request = next(steps)
        while True:
            try:
                outcome = request.run()
            except BaseException as e:  # noqa: BLE001 - the job's own handlers decide (Ctrl-C included)
                request = steps.throw(e)
            else:
                request = steps.send(outcome)
    except StopIteration as done:
        return done.value
