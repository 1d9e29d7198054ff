"""Turning a stop from outside into an exception the job can record: Ctrl-C (SIGINT), SIGTERM, and
the death of the process that launched a parallel worker.

`install()` makes the first SIGINT or SIGTERM raise `Interrupted` wherever the main thread is (in
the middle of Lightning's fit, too: Lightning re-raises what is not a KeyboardInterrupt after its
own clean-up), so that `job.run_job` writes the record `status: interrupted` and the run or sweep
stops; a second signal while that record is being written ends the process at once.
`stop_with_parent()` makes a parallel worker stop its job when its launcher dies, even by SIGKILL.

Kept free of torch and Lightning imports: the entry point installs it before parsing the command line.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from compresslab.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"reason": None, "orphaned": False}


def _handler(signum, frame) -> None:
    if _state["reason"] is not None:
        os._exit(128 + signum)
    name = signal.Signals(signum).name
    _state["reason"] = ("stopped: its launching process died" if _state["orphaned"]
                        else f"stopped by {name}")
    raise Interrupted(_state["reason"])


def install() -> None:
    """Raise Interrupted on the first SIGINT or SIGTERM of this process (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        signal.signal(signum, _handler)


def orphaned() -> bool:
    """True once the launcher this worker was started by has died."""
    return _state["orphaned"]


def stop_with_parent(poll_s: float = 1.0) -> None:
    """Watch the parent process from a daemon thread; when it dies (this process is re-parented),
    SIGTERM this process, which `install()` turns into Interrupted in the running job."""
    parent = os.getppid()
    if getattr(stop_with_parent, "_watching", None) == parent:
        return
    stop_with_parent._watching = parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        _state["orphaned"] = True
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="compresslab-parent-watch", daemon=True).start()
