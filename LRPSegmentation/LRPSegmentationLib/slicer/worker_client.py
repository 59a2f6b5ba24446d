"""The Slicer side of the computation process (`worker`): start it, send requests, poll the answers.

No Qt, no MRML, no torch. `WorkerClient` owns one worker process, started on the first request
and kept alive between requests (model loaded, last case traced); it is restarted on the next
request after a crash or a cancel. `WorkerClient.segment` and `WorkerClient.explain` return a
`WorkerJob`, which the module's QTimer polls exactly like any `jobs.Job` (``done``, ``fraction``,
``message``, ``cancel()``, ``wait()``, ``result()``); ``result()`` returns what
`compute.compute_labels` / `compute.compute_explanation` return in-process (the label array / a
`compute.ExplainResult`).

- Inputs and outputs travel as ``.npy`` files in a per-session temporary folder (never as JSON
  numbers); the worker's log (its stderr) is ``worker.log`` there.
- A reader thread turns the worker's stdout lines into a queue; the main thread pumps it when it
  polls (``done`` / ``wait``). Inside Slicer the main thread keeps the GIL while idle, so the pump
  blocks a few milliseconds on the queue: that lets the reader thread run.
- ``cancel()`` kills the worker's whole process tree at once (PythonSlicer is a launcher with the
  real interpreter as its child, as in MONAIAuto3DSeg): the request stops immediately.
- A worker that dies (a CUDA fault, the out-of-memory killer, kill -9) fails the running job with
  a `jobs.WorkerError` saying so; Slicer's process and the scene are untouched.

Which Python runs the worker (`default_python`): inside 3D Slicer ``sys.executable`` is the Slicer
application itself, so the worker is started with ``PythonSlicer``, found as Slicer's own
``slicer.util`` and TotalSegmentator / MONAIAuto3DSeg find it (``shutil.which("PythonSlicer")``:
Slicer puts its bin folder on PATH), else next to the Slicer executable; anywhere else (tests,
scripts) ``sys.executable``. The library's folder is put first on the worker's PYTHONPATH.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from .compute import ExplainRequest, ExplainResult, InputStack
from .jobs import Cancelled, GPUMemoryError, WorkerError
from .worker import LOGGER, PROTOCOL, decode_arrays, encode_arrays

__all__ = ["WorkerClient", "WorkerJob", "case_id", "default_python"]

log = logging.getLogger("LRPSegmentation.worker_client")

CRASHED = ("the computation process stopped unexpectedly (exit code {code}); Slicer and the scene are intact; "
           "press the button again to restart it")
#: The folder that holds the ``LRPSegmentationLib`` package (goes on the worker's PYTHONPATH).
_LIBRARY_ROOT = Path(__file__).resolve().parents[2]
#: Longest the pump blocks on the queue when polled (seconds): lets the reader thread take the GIL.
_PUMP_WAIT_S = 0.005
#: How long `WorkerClient.shutdown` waits for a polite exit before killing.
_SHUTDOWN_WAIT_S = 5.0

Message = dict[str, Any]


def default_python() -> str:
    """The interpreter for the worker: PythonSlicer inside 3D Slicer, else ``sys.executable``.

    Raises:
        WorkerError: inside Slicer, but PythonSlicer cannot be found.
    """
    executable = Path(sys.executable)
    if executable.stem.lower().startswith("python"):
        return sys.executable
    # sys.executable is Slicer itself (SlicerApp-real, Slicer.exe): never start a second Slicer.
    found = shutil.which("PythonSlicer")
    if found:
        return found
    beside = executable.with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
    if beside.is_file():
        return str(beside)
    raise WorkerError(f"could not find PythonSlicer (looked on PATH and in {executable.parent}) to start the "
                      "computation process; reinstall 3D Slicer", kind="start")


def case_id(inputs: InputStack) -> str:
    """A content hash of the normalized input (shape, dtype, sequence names and values)."""
    array = np.ascontiguousarray(inputs.array)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([list(array.shape), str(array.dtype), list(inputs.sequence_names)]).encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _error_from(message: Message) -> Exception:
    """The exception for a worker's error response: the in-process one where there is one."""
    kind, text = message.get("kind", "internal"), str(message.get("message", ""))
    if kind == "invalid":
        return ValueError(text)
    if kind == "not_found":
        return FileNotFoundError(text)
    if kind == "gpu_memory":
        return GPUMemoryError(text)
    return WorkerError(f"the computation process refused the request ({kind}): {text}", kind=kind)


def _metadata(message: Message) -> Message:
    """What a result says about the computation (``seconds`` in the worker, explain's
    ``forward_passes`` and ``forward_reused``)."""
    return {key: message[key] for key in ("seconds", "forward_passes", "forward_reused") if key in message}


class _Process:
    """One running worker: the process, a reader thread and the queue of its parsed messages."""

    def __init__(self, python: str, folder: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_LIBRARY_ROOT), env.get("PYTHONPATH")) if p)
        command = [python, "-m", "LRPSegmentationLib.slicer.worker", "--folder", str(folder)]
        self.log_path = folder / "worker.log"
        with open(self.log_path, "ab") as log_file:
            self.popen = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, env=env,
                cwd=folder,  # -m puts the working folder first on sys.path: nothing there shadows the library
                start_new_session=os.name == "posix",  # its own process group: killed as one
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        self.messages: queue.Queue[Message] = queue.Queue()
        threading.Thread(target=self._read, name="LRPSegmentation worker reader", daemon=True).start()

    def _read(self) -> None:
        """Reader thread: each stdout line → a message; at the end an ``exit`` message with the code."""
        for line in self.popen.stdout:
            try:
                self.messages.put(json.loads(line))
            except json.JSONDecodeError:
                log.warning("computation process: %s", line.decode(errors="replace").rstrip())
        self.messages.put({"type": "exit", "code": self.popen.wait()})

    def send(self, message: Message) -> None:
        try:
            self.popen.stdin.write((json.dumps(message) + "\n").encode())
            self.popen.stdin.flush()
        except OSError:  # it died: the reader thread reports the exit
            log.debug("could not send to the computation process", exc_info=True)

    def kill(self) -> None:
        """Kill the process tree now (PythonSlicer's launcher and the interpreter it started)."""
        if os.name == "posix":  # its own process group (start_new_session): one signal for the tree
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        else:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.popen.pid)], capture_output=True,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        self.popen.wait()

    def stop(self) -> None:
        """Ask for a polite exit (``shutdown``), kill after `_SHUTDOWN_WAIT_S`."""
        if self.popen.poll() is None:
            self.send({"protocol": PROTOCOL, "id": "shutdown", "type": "shutdown"})
            try:
                self.popen.wait(_SHUTDOWN_WAIT_S)
            except subprocess.TimeoutExpired:
                self.kill()

    def last_words(self) -> str:
        """The log's last line unless it is the worker's own routine news (e.g. the exception that
        ended it, "CUDA error: ..."), or ""."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip() if lines and f"{LOGGER}: " not in lines[-1] else ""


class _Session:
    """What the client holds between requests; kept apart from the client so that a garbage-collected
    client still stops its worker (`weakref.finalize`)."""

    def __init__(self) -> None:
        self.process: _Process | None = None
        self.folder: Path | None = None

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


class WorkerJob:
    """One computation in the worker process, polled like any `jobs.Job` (main thread only).

    Attributes:
        fraction, message: the latest progress.
        info: the worker's metadata of the final answer: ``seconds`` it spent on it; explain also
            ``forward_passes`` (0: the case's traced pass was reused) and ``forward_reused``.
    """

    def __init__(self, client: "WorkerClient", compose: Callable[[], list[Message]],
                 finish: Callable[[Message], Any]) -> None:
        self._client, self._compose, self._finish = client, compose, finish
        self.fraction, self.message = 0.0, ""
        self.info: Message = {}
        self.ids: list[str] = []
        self.files: list[Path] = []  # written for this job; removed when it ends
        self._started = self._done = self._cancelled = False
        self._value: Any = None
        self._error: BaseException | None = None

    def start(self) -> "WorkerJob":
        """Send the requests (starting the worker if needed); a failure to start ends the job with it."""
        if self._started:
            raise RuntimeError("this job was started already")
        self._started = True
        try:
            self._client._submit(self)
        except OSError as error:  # no such interpreter, no temporary folder, ...
            self._end(error=WorkerError(f"could not start the computation process: {error}", kind="start"))
        except Exception as error:  # noqa: BLE001 -- ends the job, as any failure of the computation does
            self._end(error=error)
        return self

    @property
    def done(self) -> bool:
        self._check_started()
        if not self._done:
            self._client._pump(_PUMP_WAIT_S)
        return self._done

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done (True) or ``timeout`` seconds (False)."""
        self._check_started()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done:
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                return False
            self._client._pump(left)
        return True

    def cancel(self) -> None:
        """Stop now: the worker process tree is killed (the next request starts a new one)."""
        if self._done:
            return
        self._cancelled = True
        self._client._kill()

    def cancelled(self) -> bool:
        return self._cancelled

    def result(self) -> Any:
        """The computation's value; raises its error (`jobs.Cancelled`, `jobs.WorkerError`, ValueError, ...)."""
        if not self._done:
            raise RuntimeError("the computation is still running")
        if self._error is not None:
            raise self._error
        return self._value

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError("call start() first: the job has not been sent to the computation process")

    # -- called by the client --------------------------------------------------------------------
    def _receive(self, message: Message) -> None:
        final = message.get("id") == self.ids[-1]
        if message.get("type") == "progress":
            self.message = str(message.get("message", ""))
            self.fraction = float(message.get("fraction", 0.0)) if final else self.fraction
        elif message.get("type") == "error":
            self._end(error=_error_from(message))
        elif message.get("type") == "result" and final:
            try:
                self._end(value=self._finish(message))
            except Exception as error:  # noqa: BLE001 -- e.g. an unreadable result file
                self._end(error=WorkerError(f"could not read the computation's result: {error}", kind="internal"))

    def _end(self, value: Any = None, error: BaseException | None = None) -> None:
        if self._done:
            return
        self._done, self._value, self._error = True, value, error
        if error is None:
            self.fraction = 1.0
        for file in self.files:
            file.unlink(missing_ok=True)
        self._client._forget(self)


class WorkerClient:
    """One worker process for the module: started lazily, kept between requests, restarted after a
    crash or a cancel. Call `shutdown` when done (the module does on cleanup).

    Args:
        python: the interpreter that runs the worker (default: `default_python`).
    """

    def __init__(self, python: str | None = None) -> None:
        self.python = python
        self._session = _Session()
        weakref.finalize(self, _Session.close, self._session)
        self._ids = itertools.count(1)
        self._jobs: dict[str, WorkerJob] = {}  # request id → its job
        self._case: str | None = None         # the case id the running worker holds
        self.worker_info: Message = {}         # the running worker's answer to hello

    # -- requests --------------------------------------------------------------------------------
    def segment(self, inputs: InputStack, model_path: str, device: str | None = "auto",
                options: Mapping[str, Any] | None = None) -> WorkerJob:
        """The label map (``result()``: uint8/int32 (D, H, W), as `compute.compute_labels`)."""
        def compose() -> list[Message]:
            messages = self._prepare(job, inputs, model_path)
            return messages + [self._message(job, "segment", case_id=self._case, model=str(model_path),
                                             device=device or "auto", **(options or {}))]

        def finish(message: Message) -> np.ndarray:
            job.info = _metadata(message)
            return decode_arrays(message, delete=True)["labels"]

        job = WorkerJob(self, compose, finish)
        return job

    def explain(self, request: ExplainRequest, model_path: str, options: Mapping[str, Any] | None = None
                ) -> WorkerJob:
        """Region A's explanation (``result()``: a `compute.ExplainResult`, as `compute.compute_explanation`)."""
        def compose() -> list[Message]:
            messages = self._prepare(job, request.inputs, model_path)
            target = request.target  # an int or an engine.Target (index, contrast)
            return messages + [self._message(
                job, "explain", case_id=self._case, model=str(model_path),
                region=self._write(job, "region", np.asarray(request.region, dtype=bool)),
                region_name=request.region_name, target=int(getattr(target, "index", target)),
                contrast=bool(getattr(target, "contrast", request.contrast)), composite=request.composite,
                device=request.device or "auto", tolerance=request.tolerance, cross_check=bool(request.cross_check),
                shapley=None if request.shapley is None else bool(request.shapley),
                **(options or {}))]

        def finish(message: Message) -> ExplainResult:
            job.info = _metadata(message)
            values = decode_arrays(message, delete=True)
            return ExplainResult(**{f.name: values[f.name] for f in fields(ExplainResult)})

        job = WorkerJob(self, compose, finish)
        return job

    def request(self, kind: str, **fields_: Any) -> WorkerJob:
        """One raw request (tools, tests); ``result()`` is the answer's fields, arrays loaded."""
        job = WorkerJob(self, lambda: [self._message(job, kind, **fields_)],
                        lambda message: decode_arrays(message, delete=True))
        return job

    # -- the process -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        process = self._session.process
        return process is not None and process.popen.poll() is None

    @property
    def pid(self) -> int | None:
        """The worker interpreter's own process id (from its hello), or None when not running."""
        return self.worker_info.get("pid") if self.running else None

    @property
    def log_path(self) -> Path | None:
        return None if self._session.folder is None else self._session.folder / "worker.log"

    def shutdown(self) -> None:
        """Stop the worker (politely, then by force) and remove the session folder."""
        for job in list(self._jobs.values()):
            job._end(error=Cancelled("the computation process was shut down"))
        self._session.close()
        self._case, self.worker_info = None, {}

    def _ensure_process(self) -> _Process:
        """The running worker; a new one (and a hello) if there is none or it has stopped."""
        session = self._session
        if session.process is not None and session.process.popen.poll() is None:
            return session.process
        session.process, self._case, self.worker_info = None, None, {}
        if session.folder is None:
            session.folder = Path(tempfile.mkdtemp(prefix="LRPSegmentation-"))
        session.process = _Process(self.python or default_python(), session.folder)
        hello = WorkerJob(self, lambda: [], self._hello)
        session.process.send(self._message(hello, "hello"))
        return session.process

    def _hello(self, message: Message) -> Message:
        if message.get("worker_protocol") != PROTOCOL:
            raise WorkerError(f"the computation process speaks protocol {message.get('worker_protocol')}, "
                              f"this module {PROTOCOL}: restart 3D Slicer", kind="bad_request")
        self.worker_info = message
        return message

    def _submit(self, job: WorkerJob) -> None:
        process = self._ensure_process()
        job.message = "Starting the computation"
        for message in job._compose():
            process.send(message)

    def _prepare(self, job: WorkerJob, inputs: InputStack, model_path: str) -> list[Message]:
        """load_model (the worker skips it when that model is loaded) and, for a case it does not
        hold, set_case."""
        messages = [self._message(job, "load_model", path=str(model_path))]
        case = case_id(inputs)
        if case != self._case:
            messages.append(self._message(job, "set_case", case_id=case, inputs=self._write(job, "inputs", inputs.array),
                                          sequences=list(inputs.sequence_names)))
            self._case = case
        return messages

    def _message(self, job: WorkerJob, kind: str, **fields_: Any) -> Message:
        request_id = f"r{next(self._ids)}"
        job.ids.append(request_id)
        self._jobs[request_id] = job
        return {"protocol": PROTOCOL, "id": request_id, "type": kind, **fields_}

    def _write(self, job: WorkerJob, name: str, array: np.ndarray) -> dict[str, str]:
        """An input array as a file of the session folder (removed when ``job`` ends)."""
        reference = encode_arrays({name: array}, self._session.folder, f"in{next(self._ids)}")[name]
        job.files.append(Path(reference["npy"]))
        return reference

    # -- polling ---------------------------------------------------------------------------------
    def _pump(self, wait: float) -> None:
        """Handle the worker's messages: the first waited for up to ``wait`` seconds, then all queued."""
        process = self._session.process
        if process is None:
            time.sleep(wait)
            return
        try:
            message = process.messages.get(timeout=wait)
            while True:
                self._dispatch(process, message)
                message = process.messages.get_nowait()
        except queue.Empty:
            pass

    def _dispatch(self, process: _Process, message: Message) -> None:
        if message.get("type") == "exit":
            if self._session.process is process:
                self._session.process = None
            error = WorkerError(CRASHED.format(code=message.get("code")), kind="crashed")
            words = process.last_words()
            if words:
                error = WorkerError(f"{error} (its last message: {words})", kind="crashed")
            for job in {id(j): j for j in self._jobs.values()}.values():
                job._end(error=error)
            return
        job = self._jobs.get(str(message.get("id")))
        if job is not None:
            job._receive(message)

    def _kill(self) -> None:
        """Cancel: kill the worker now; every job in flight ends as `jobs.Cancelled`."""
        process, self._session.process = self._session.process, None
        self._case, self.worker_info = None, {}
        if process is not None:
            process.kill()
        for job in {id(j): j for j in self._jobs.values()}.values():
            job._end(error=Cancelled("cancelled by the user"))

    def _forget(self, job: WorkerJob) -> None:
        """A job ended: drop its request ids; after a failure the held case is unknown."""
        for request_id in job.ids:
            self._jobs.pop(request_id, None)
        if job._error is not None:
            self._case = None
