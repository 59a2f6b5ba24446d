"""The computation process: Segment and Explain run here, outside 3D Slicer's process.

Inside Slicer a Python thread barely runs (the main thread keeps the GIL while idle in Qt's event
loop), a CUDA fault would take the unsaved scene down with it, and a running pass cannot be
stopped. So `worker_client.WorkerClient` starts this module as its own process::

    PythonSlicer -m LRPSegmentationLib.slicer.worker --folder SESSION_FOLDER

It never imports ``slicer``, ``vtk`` or Qt: it runs `compute`'s functions, the very ones the
in-process ``logic.segment`` / ``logic.explain`` run. It stays alive between requests and keeps
the loaded model (by package folder and the weights' sha256 from ``model.json``) and the last
case: its normalized input and an open traced forward pass (`compute.trace_case`), so explaining
another region of the same case (repainting A) costs one LRP pass and no forward pass; the
composition map is cached per target inside the traced pass.

Protocol (version `PROTOCOL`)
-----------------------------
One JSON object per line: requests on stdin, responses on stdout; logs go to stderr. Every
message carries ``"protocol": 1`` and the request's ``"id"`` (letters, digits, ``-``, ``_``).
Arrays never travel as JSON numbers: an array field is ``{"npy": PATH}``, a ``.npy`` file in the
session folder (``np.save``; read with ``allow_pickle=False``).

Requests (``"type"``, then its fields):

- ``hello``: -> ``pid``, ``python``, ``torch``, ``cuda`` (device names), ``worker_protocol``.
- ``load_model`` ``path`` (a ``.lrpmodel`` folder): load it unless it is the loaded one (same folder
  and weights checksum) -> ``name``, ``sha256``, ``reused``.
- ``set_case`` ``case_id``, ``inputs`` (array float32 (C, D, H, W), normalized), ``sequences`` (C
  names): hold this case instead of the previous one -> ``case_id``, ``shape``.
- ``segment`` ``case_id``, ``model`` (the loaded package's path), ``device`` -> ``labels`` (array).
- ``explain`` ``case_id``, ``model``, ``region`` (array bool (D, H, W)), ``region_name``, ``target``
  (class index), ``contrast`` (bool: class vs rest), ``composite`` (None: the package's),
  ``device``, ``tolerance`` (None: the engine's), ``cross_check`` (bool), ``shapley`` (optional:
  bool, or None/absent = with the cross-check: region A's decision shares, 2^C forward passes) ->
  the fields of `compute.ExplainResult` (``relevance``, ``composition``, ``shares``,
  ``positive_shares``, ``margin_retained``, ``decision_shares``, ``decision_values`` as arrays or
  null; ``n_used``, ``n_excluded``, ``sequence_names``, ``region_name``, ``diagnostics``,
  ``without_sensitivity``, ``margin_all``, ``margin_none``, ``without_decision``) plus
  ``forward_passes`` (network passes of the traced pass this request ran: 0 when the case's traced
  pass was reused; the cross-check's and the decision shares' passes are not counted) and
  ``forward_reused``.
- ``shutdown`` -> an empty result; then the process exits (it also exits when stdin closes).

``segment`` and ``explain`` accept ``wait_for_file`` (testing only): wait until that file exists
before computing, after a progress message "waiting for ...", so a test can stop the worker
mid-request deterministically.

Responses: ``{"type": "progress", "id", "fraction" (0..1), "message"}`` (streamed, any number),
then exactly one ``{"type": "result", "id", ..., "seconds"}`` (``seconds``: the time the worker
spent on the request) or ``{"type": "error", "id", "kind",
"message"}``. Error kinds: ``bad_request`` (malformed, unknown type, missing field, other protocol
version), ``unknown_model`` (a model it has not loaded), ``unknown_case`` (a case id it does not
hold), ``invalid`` (the computation refused the input; the message says what to fix),
``not_found``, ``gpu_memory``, ``internal`` (traceback in the log).

Transport is kept apart from handling: `Worker.handle` maps a request dict to a response dict
(progress through a callback) and knows nothing of pipes; `serve` is the stdio loop around it. The
same messages could be served over a socket by a GPU server (the MONAI Label pattern); there the
``{"npy": ...}`` references would travel as binary frames after the JSON line instead of paths.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from . import compute
from .jobs import GPUMemoryError

__all__ = ["LOGGER", "PROTOCOL", "RequestError", "Worker", "decode_arrays", "encode_arrays", "main", "serve"]

PROTOCOL = 1
#: Request ids name the session's array files, so they are kept to safe file-name characters.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: How often a `wait_for_file` request looks for its file (seconds).
_WAIT_POLL_S = 0.02

Message = dict[str, Any]
Emit = Callable[[Message], None]

#: The worker's logger (its stderr, the session's worker.log).
LOGGER = "LRPSegmentation.worker"
log = logging.getLogger(LOGGER)


class RequestError(Exception):
    """A request the worker refuses; ``kind`` is the error response's kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# --------------------------------------------------------------------------------------------
# Arrays as .npy files
# --------------------------------------------------------------------------------------------


def encode_arrays(values: dict[str, Any], folder: Path, prefix: str) -> Message:
    """``values`` for a JSON message: each ndarray saved as ``<folder>/<prefix>-<key>.npy`` and
    replaced by ``{"npy": path}``; numpy scalars become Python numbers."""
    encoded: Message = {}
    for key, value in values.items():
        if isinstance(value, np.ndarray):
            path = folder / f"{prefix}-{key}.npy"
            np.save(path, value, allow_pickle=False)
            encoded[key] = {"npy": str(path)}
        elif isinstance(value, (list, tuple)):
            encoded[key] = [v.item() if isinstance(v, np.generic) else v for v in value]
        else:
            encoded[key] = value.item() if isinstance(value, np.generic) else value
    return encoded


def _is_array(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"npy"}


def decode_arrays(message: Message, delete: bool = False) -> Message:
    """``message`` with each ``{"npy": path}`` loaded (``delete``: the file is removed after)."""
    decoded = dict(message)
    for key, value in message.items():
        if _is_array(value):
            decoded[key] = np.load(value["npy"], allow_pickle=False)
            if delete:
                Path(value["npy"]).unlink(missing_ok=True)
    return decoded


# --------------------------------------------------------------------------------------------
# The handler: request dict -> response dict
# --------------------------------------------------------------------------------------------


@dataclass
class _Model:
    """The loaded model package and its network (eval, float32, on the CPU between requests)."""

    path: str
    sha256: str
    package: Any
    network: Any


@dataclass
class _Case:
    """The held case; ``forward`` is its open traced pass for ``forward_key`` (or None)."""

    case_id: str
    inputs: compute.InputStack
    forward: Any = None
    forward_key: tuple | None = None

    def close_forward(self) -> None:
        if self.forward is not None:
            self.forward.close()
        self.forward, self.forward_key = None, None


def _field(request: Message, name: str, kind: type) -> Any:
    """``request[name]``, which must be of ``kind``; `RequestError` ("bad_request") otherwise."""
    if name not in request:
        raise RequestError("bad_request", f"a {request.get('type')} request needs the field '{name}'")
    value = request[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RequestError("bad_request", f"field '{name}' of a {request.get('type')} request has the wrong type "
                                          f"({type(value).__name__})")
    return value


class Worker:
    """Answers requests (see the module docstring) for one session folder; holds one model and one case."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).resolve()
        self._model: _Model | None = None
        self._case: _Case | None = None
        self.stopping = False
        self._handlers: dict[str, Callable[[Message, Emit], Message]] = {
            "hello": self._hello, "load_model": self._load_model, "set_case": self._set_case,
            "segment": self._segment, "explain": self._explain, "shutdown": self._shutdown}

    def close(self) -> None:
        """Free the held case's traced pass (the model goes back to its device)."""
        if self._case is not None:
            self._case.close_forward()

    def handle(self, request: Any, emit: Emit | None = None) -> Message:
        """The final response (``result`` or ``error``) to one request; ``emit`` gets its progress messages."""
        request_id = request.get("id") if isinstance(request, dict) else None
        try:
            kind = self._check(request)

            def progress(fraction: float, message: str) -> None:
                if emit is not None:
                    emit({"protocol": PROTOCOL, "id": request_id, "type": "progress", "fraction": float(fraction),
                          "message": message})

            started = time.perf_counter()
            fields_ = self._handlers[kind](request, progress)
            return {"protocol": PROTOCOL, "id": request_id, "type": "result", **fields_,
                    "seconds": time.perf_counter() - started}
        except RequestError as error:
            return _error(request_id, error.kind, str(error))
        except GPUMemoryError as error:
            self._drop_forward()  # free what the failed pass held
            return _error(request_id, "gpu_memory", str(error))
        except ValueError as error:
            return _error(request_id, "invalid", str(error))
        except FileNotFoundError as error:
            return _error(request_id, "not_found", str(error))
        except Exception as error:  # noqa: BLE001 -- reported to the client, traceback in the log
            log.error("request %s failed:\n%s", request_id, traceback.format_exc())
            self._drop_forward()
            return _error(request_id, "internal", f"{type(error).__name__}: {error}")

    def _check(self, request: Any) -> str:
        """The request's type, after checking the envelope (object, protocol, id, known type)."""
        if not isinstance(request, dict):
            raise RequestError("bad_request", "a request must be a JSON object")
        if request.get("protocol") != PROTOCOL:
            raise RequestError("bad_request", f"this worker speaks protocol {PROTOCOL}, the request says "
                                              f"{request.get('protocol')!r}: restart the module")
        if not isinstance(request.get("id"), str) or not _ID.fullmatch(request["id"]):
            raise RequestError("bad_request", "a request needs an id of 1-64 letters, digits, '-' or '_'")
        kind = request.get("type")
        if kind not in self._handlers:
            raise RequestError("bad_request", f"unknown request type {kind!r}; known: {', '.join(self._handlers)}")
        return kind

    def _drop_forward(self) -> None:
        if self._case is not None:
            self._case.close_forward()

    # -- state checks ----------------------------------------------------------------------------
    def _model_for(self, request: Message) -> _Model:
        path = _field(request, "model", str)
        if self._model is None or self._model.path != str(Path(path).resolve()):
            loaded = "no model is loaded" if self._model is None else f"the loaded model is {self._model.path}"
            raise RequestError("unknown_model", f"the worker has not loaded the model {path} ({loaded}): "
                                                "send load_model first")
        return self._model

    def _case_for(self, request: Message) -> _Case:
        case_id = _field(request, "case_id", str)
        if self._case is None or self._case.case_id != case_id:
            held = "it holds no case" if self._case is None else f"it holds case {self._case.case_id!r}"
            raise RequestError("unknown_case", f"the worker does not hold case {case_id!r} ({held}): "
                                               "send set_case first")
        return self._case

    def _array(self, request: Message, name: str) -> np.ndarray:
        """An array field: a .npy file inside the session folder."""
        value = _field(request, name, dict)
        if not _is_array(value) or not isinstance(value["npy"], str):
            raise RequestError("bad_request", f"field '{name}' must be {{\"npy\": PATH}}")
        path = Path(value["npy"]).resolve()
        if path.parent != self.folder:
            raise RequestError("bad_request", f"array files must lie in the session folder {self.folder}")
        if not path.is_file():
            raise RequestError("bad_request", f"the array file {path} does not exist")
        return np.load(path, allow_pickle=False)

    # -- requests ------------------------------------------------------------------------------
    def _hello(self, request: Message, progress: Callable[[float, str], None]) -> Message:
        import torch

        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
            if torch.cuda.is_available() else []
        return {"pid": os.getpid(), "python": sys.executable, "torch": torch.__version__, "cuda": devices,
                "worker_protocol": PROTOCOL}

    def _load_model(self, request: Message, progress: Callable[[float, str], None]) -> Message:
        from ..models.metadata import read_description
        from ..models.package import load_package

        description = read_description(_field(request, "path", str))
        path, sha256 = str(Path(description.path).resolve()), str(description.weights.get("sha256"))
        reused = self._model is not None and (self._model.path, self._model.sha256) == (path, sha256)
        if not reused:
            progress(0.0, "Loading the model")
            if self._case is not None:  # its traced pass holds the old network
                self._case.close_forward()
            self._model = None
            package = load_package(path)  # checks the weights against the checksum
            self._model = _Model(path, sha256, package, compute.load_model(package))
        return {"name": self._model.package.name, "sha256": sha256, "reused": reused}

    def _set_case(self, request: Message, progress: Callable[[float, str], None]) -> Message:
        case_id = _field(request, "case_id", str)
        sequences = [str(name) for name in _field(request, "sequences", list)]
        array = self._array(request, "inputs")
        if array.ndim != 4 or array.shape[0] != len(sequences):
            raise RequestError("bad_request", f"inputs must be (C, D, H, W) with C = {len(sequences)} sequences, "
                                              f"got {array.shape}")
        self._drop_forward()
        inputs = compute.InputStack(array.astype(np.float32, copy=False), sequences, tuple(array.shape[1:]))
        self._case = _Case(case_id, inputs)
        return {"case_id": case_id, "shape": list(array.shape)}

    def _segment(self, request: Message, progress: Callable[[float, str], None]) -> Message:
        model, case = self._model_for(request), self._case_for(request)
        device = _field(request, "device", str)
        _wait_for_file(request, progress)
        if case.forward_key is not None and case.forward_key[2] != device:
            case.close_forward()  # the network is about to move to another device
        labels = compute.compute_labels(model.network, case.inputs, model.package, device, progress=progress)
        return encode_arrays({"labels": labels}, self.folder, request["id"])

    def _explain(self, request: Message, progress: Callable[[float, str], None]) -> Message:
        from ..engine import Target

        model, case = self._model_for(request), self._case_for(request)
        region = self._array(request, "region").astype(bool, copy=False)
        if region.shape != case.inputs.reference_shape:
            raise RequestError("bad_request", f"region has shape {region.shape}, the case {case.inputs.reference_shape}")
        composite = request.get("composite") or model.package.composite
        tolerance = request.get("tolerance")
        explain = compute.ExplainRequest(
            case.inputs, region, Target(int(_field(request, "target", int)), bool(request.get("contrast", False))),
            composite, _field(request, "device", str), str(request.get("region_name") or "region A"),
            None if tolerance is None else float(tolerance), bool(request.get("cross_check", False)),
            shapley=_optional_bool(request, "shapley"))
        _wait_for_file(request, progress)
        key = (model.sha256, composite, explain.device)
        reused = case.forward is not None and case.forward_key == key
        if not reused:
            case.close_forward()
            case.forward = compute.trace_case(explain, model.package, model.network)
            case.forward_key = key
        before = case.forward.forward_passes
        result = compute.compute_explanation(explain, model.package, model.network, progress, forward=case.forward)
        values = {f.name: getattr(result, f.name) for f in fields(result)}
        return {**encode_arrays(values, self.folder, request["id"]),
                "forward_passes": case.forward.forward_passes - before, "forward_reused": reused}

    def _shutdown(self, request: Message, progress: Callable[[float, str], None]) -> Message:
        self.stopping = True
        return {}


def _optional_bool(request: Message, name: str) -> bool | None:
    """``request[name]``: true, false, or None when absent or null; `RequestError` otherwise."""
    value = request.get(name)
    if value is not None and not isinstance(value, bool):
        raise RequestError("bad_request", f"field '{name}' of a {request.get('type')} request must be true, false "
                                          f"or null, got {type(value).__name__}")
    return value


def _error(request_id: Any, kind: str, message: str) -> Message:
    return {"protocol": PROTOCOL, "id": request_id, "type": "error", "kind": kind, "message": message}


def _wait_for_file(request: Message, progress: Callable[[float, str], None]) -> None:
    """Testing: block until ``request["wait_for_file"]`` exists (see the module docstring)."""
    path = request.get("wait_for_file")
    if not path:
        return
    progress(0.0, f"waiting for {path}")
    while not os.path.exists(path):
        time.sleep(_WAIT_POLL_S)


# --------------------------------------------------------------------------------------------
# The stdio transport
# --------------------------------------------------------------------------------------------


def serve(worker: Worker, lines: Iterable[str], send: Emit) -> None:
    """Answer each JSON line of ``lines`` with ``send`` until ``shutdown`` or the end of the input."""
    for line in lines:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            send(_error(None, "bad_request", f"not a JSON line: {error}"))
            continue
        send(worker.handle(request, send))
        if worker.stopping:
            return


def main(argv: list[str] | None = None) -> int:
    """The process: ``--folder`` is the session folder (array files); requests on stdin."""
    parser = argparse.ArgumentParser(description="LRPSegmentation's computation process (see the module docstring)")
    parser.add_argument("--folder", required=True, help="session folder shared with the client (array files)")
    args = parser.parse_args(argv)
    # Only protocol lines on the real stdout: anything else printed (libraries, C code) goes to stderr.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    def send(message: Message) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    worker = Worker(args.folder)
    log.info("started (pid %d, protocol %d)", os.getpid(), PROTOCOL)
    try:
        serve(worker, iter(sys.stdin.readline, ""), send)
    finally:
        worker.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
