"""How a long computation reports progress and ends: the job the module polls, cancellation, errors.

Pure Python: no MRML, no Qt, no torch. The module starts a `Job` (a `worker_client.WorkerJob`: the
computation runs in a separate process) and polls it from a QTimer; the computation itself gets
``progress(fraction, message)`` and ``cancel()`` callables and checks them between steps with
`check_cancel` / `report` (in-process runs: ``logic.segment`` / ``logic.explain``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["CancelCallback", "Cancelled", "GPUMemoryError", "Job", "ProgressCallback", "WorkerError", "check_cancel",
           "gpu_memory_error", "report"]

#: Receives (fraction in 0..1, message).
ProgressCallback = Callable[[float, str], None]
#: Returns True when the user asked to stop.
CancelCallback = Callable[[], bool]


class Cancelled(RuntimeError):
    """The user cancelled; partially created outputs have been removed."""


class GPUMemoryError(RuntimeError):
    """The GPU ran out of memory; the message says what to try instead."""


class WorkerError(RuntimeError):
    """The computation process failed: it stopped unexpectedly (``kind`` "crashed"), could not start
    ("start"), or refused a request ("unknown_case", "unknown_model", "bad_request", "internal").
    Slicer's own process and the scene are never affected."""

    def __init__(self, message: str, kind: str = "crashed") -> None:
        super().__init__(message)
        self.kind = kind


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


class Job(Protocol):
    """What the module's QTimer polls (main thread only).

    ``start()`` once; then ``done``, ``fraction`` (0..1) and ``message`` tell the progress;
    ``cancel()`` stops the computation (``cancelled()`` says whether it was asked to);
    ``wait(timeout)`` blocks until done (True) or the timeout (False); once done, ``result()``
    returns the value or raises the computation's error (`Cancelled`, `WorkerError`, ...).
    """

    fraction: float
    message: str

    def start(self) -> "Job": ...

    @property
    def done(self) -> bool: ...

    def cancel(self) -> None: ...

    def cancelled(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...

    def result(self) -> Any: ...
