"""Long work off Slicer's main thread: a background job the module polls, cancellation, progress.

Pure Python (threading): no MRML, no Qt, no torch. The module starts a `BackgroundJob` and polls it
from a QTimer; the job's function gets ``progress(fraction, message)`` and ``cancel()`` callables and
checks them between steps with `check_cancel` / `report`.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["BackgroundJob", "CancelCallback", "Cancelled", "GPUMemoryError", "ProgressCallback", "check_cancel",
           "gpu_memory_error", "report"]

#: Receives (fraction in 0..1, message).
ProgressCallback = Callable[[float, str], None]
#: Returns True when the user asked to stop.
CancelCallback = Callable[[], bool]


class Cancelled(RuntimeError):
    """The user cancelled; partially created outputs have been removed."""


class GPUMemoryError(RuntimeError):
    """The GPU ran out of memory; the message says what to try instead."""


def gpu_memory_error(error: Exception) -> GPUMemoryError:
    """A torch out-of-memory error as a `GPUMemoryError` whose message offers the alternatives."""
    return GPUMemoryError(f"the GPU ran out of memory ({error}). Choose device 'cpu' (slower, uses main "
                          "memory), a smaller region of interest, or a model package with a smaller patch size")


def check_cancel(cancel: CancelCallback | None) -> None:
    """Raise `Cancelled` if ``cancel`` (may be None) says so."""
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the user")


def report(progress: ProgressCallback | None, fraction: float, message: str) -> None:
    """Call ``progress`` (may be None) with a float fraction in 0..1 and a message."""
    if progress is not None:
        progress(float(fraction), message)


class BackgroundJob:
    """Run ``function(progress=..., cancel=...)`` in a daemon thread.

    The function must not touch MRML or Qt. The main thread polls ``done``, ``fraction`` and
    ``message`` (e.g. from a QTimer), calls ``cancel()`` to request a stop, and on completion
    reads ``result()`` (which re-raises the worker's exception, ``Cancelled`` included).
    """

    def __init__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._function, self._args, self._kwargs = function, args, kwargs
        self._cancel_requested = threading.Event()
        self._finished = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self.fraction = 0.0
        self.message = ""
        self._thread = threading.Thread(target=self._run, name="LRPSegmentation worker", daemon=True)

    def start(self) -> "BackgroundJob":
        self._thread.start()
        return self

    def _progress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = float(fraction), str(message)

    def _run(self) -> None:
        try:
            self._result = self._function(*self._args, progress=self._progress, cancel=self.cancelled,
                                          **self._kwargs)
        except BaseException as error:  # handed to the main thread by result()
            self._error = error
        finally:
            self._finished.set()

    def cancel(self) -> None:
        """Ask the worker to stop at its next check."""
        self._cancel_requested.set()

    def cancelled(self) -> bool:
        return self._cancel_requested.is_set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def result(self) -> Any:
        """The function's return value; raises its exception. Only once ``done``."""
        if not self.done:
            raise RuntimeError("the background job is still running")
        if self._error is not None:
            raise self._error
        return self._result
