"""The compute phase of the module's Segment and Explain: numpy in, numpy out, no MRML, no Qt.

The middle of ``logic``'s prepare (MRML, main thread) -> compute -> publish (MRML, main thread)
split. It runs in the computation process (`worker`) when the module's buttons are pressed, and
in-process in the synchronous ``logic.segment`` / ``logic.explain`` (tests, scripts, self-test):
the same functions, so both give the same arrays. It never imports ``slicer``, ``vtk`` or Qt, and
torch only inside the functions (the Slicer side imports this module for `InputStack`,
`ExplainRequest` and `ExplainResult`).

The network runs through the shared `inference.Inferer`, exactly as in the CLI and the demo: the
prediction (`compute_labels`), and one traced forward pass (`trace_case`) from which the region's
explanation and the composition map come (`compute_explanation`). A caller that keeps the traced
pass open (the worker does, between requests) passes it as ``forward``: another region of the same
case then costs one LRP pass and no forward pass.

With ``ExplainRequest.shapley`` (by default: with the cross-check) `compute_explanation` also
computes region A's decision shares, the exact Shapley values of the sequences for A's decision
margin (`shapley.decision_shapley`, 2^C forward passes through the same `inference.Inferer`), and
the sequences with LRP relevance but (almost) no share of the decision
(`shapley.relevance_without_decision`). Any front end (the Slicer module, a web review app) gets
them as `ExplainResult` fields: ``decision_shares``, ``decision_values``, ``margin_all``,
``margin_none``, ``without_decision``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .jobs import CancelCallback, ProgressCallback, check_cancel, gpu_memory_error, report

__all__ = ["ExplainRequest", "ExplainResult", "InputStack", "compute_explanation", "compute_labels", "load_model",
           "trace_case"]


@dataclass
class InputStack:
    """Normalized model input on the reference grid.

    Attributes:
        array: float32 (C, D, H, W), (D, H, W) = reference array shape, channels in the package's
            sequence order.
        sequence_names: the C names.
        reference_shape: (D, H, W) of the reference volume.
    """

    array: np.ndarray
    sequence_names: list[str]
    reference_shape: tuple[int, int, int]


@dataclass
class ExplainRequest:
    """Everything the compute phase of Explain needs (numpy only).

    Attributes:
        inputs: the normalized input.
        region: bool (D, H, W) region A on the reference grid.
        target: class index or ``engine.Target``.
        contrast: with an index as ``target``: explain the class-vs-rest logit contrast (lets the
            Slicer process build a request without importing torch).
        composite: composite name; None = the package's default.
        device: "auto", "cpu", "cuda" or "cuda:N".
        cross_check: also replace each sequence by its mean (C + 1 forward passes) and report the
            decision margin kept.
        shapley: also region A's decision shares (exact Shapley values, 2^C forward passes);
            None: when ``cross_check`` is set.
    """

    inputs: InputStack
    region: np.ndarray
    target: Any
    composite: str | None
    device: str | None
    region_name: str = "region A"
    tolerance: float | None = None
    cross_check: bool = False
    contrast: bool = False
    shapley: bool | None = None

    @property
    def wants_shapley(self) -> bool:
        """Whether the decision shares are computed (``shapley``, else with the cross-check)."""
        return bool(self.cross_check if self.shapley is None else self.shapley)


@dataclass
class ExplainResult:
    """An explanation of region A as numpy arrays on the reference grid (what `compute_explanation`
    returns and `publish.publish_explanation` writes).

    Attributes:
        relevance: float32 (C, D, H, W), M_A.
        composition: float32 (C, D, H, W), per-voxel sequence shares (0 where excluded).
        shares: (C,) share of M_A per sequence (signed; sums to 1).
        positive_shares: (C,) share of the positive part of M_A.
        n_used / n_excluded: region voxels used / excluded by the normalization.
        sequence_names: the C names.
        region_name: region A's name (the default output folder is ``LRP <region_name>``).
        diagnostics: the engine's conservation checks.
        margin_retained: (C,) with the cross-check: the fraction of A's decision margin kept when
            the sequence is replaced by its mean; else None.
        without_sensitivity: with the cross-check, the sequence indices whose relevance the decision
            does not back (``evaluation.relevance_without_sensitivity``); else None.
        decision_shares: (C,) with Shapley: each sequence's share of A's decision (sums to 1); None
            when not computed or when A holds no voxel predicted as the target (no decision).
        decision_values: (C,) the Shapley values in margin units (sum = margin_all − margin_none).
        margin_all / margin_none: A's decision margin with every sequence / with none.
        without_decision: with Shapley, the sequence indices with LRP relevance but (almost) no
            share of the decision (``shapley.relevance_without_decision``).
    """

    relevance: np.ndarray
    composition: np.ndarray
    shares: np.ndarray
    positive_shares: np.ndarray
    n_used: int
    n_excluded: int
    sequence_names: list[str]
    region_name: str = "region A"
    diagnostics: dict[str, float] = field(default_factory=dict)
    margin_retained: np.ndarray | None = None
    without_sensitivity: list[int] | None = None
    decision_shares: np.ndarray | None = None
    decision_values: np.ndarray | None = None
    margin_all: float | None = None
    margin_none: float | None = None
    without_decision: list[int] | None = None

    @classmethod
    def from_explanation(cls, explanation: Any, composition: Any, sequence_names: Sequence[str],
                         region_name: str = "region A", margin_retained: np.ndarray | None = None,
                         without_sensitivity: Sequence[int] | None = None) -> "ExplainResult":
        """From an ``engine.RegionExplanation`` (tensors) and a (C, D, H, W) composition map."""
        def numpy(values: Any, dtype: type) -> np.ndarray:
            values = values.detach().cpu().numpy() if hasattr(values, "detach") else values
            return np.asarray(values, dtype=dtype)

        return cls(relevance=numpy(explanation.relevance, np.float32), composition=numpy(composition, np.float32),
                   shares=numpy(explanation.sequence_shares, np.float64),
                   positive_shares=numpy(explanation.positive_shares, np.float64),
                   n_used=int(explanation.n_used), n_excluded=int(explanation.n_excluded),
                   sequence_names=[str(name) for name in sequence_names], region_name=region_name,
                   diagnostics=dict(explanation.diagnostics), margin_retained=margin_retained,
                   without_sensitivity=None if without_sensitivity is None else list(without_sensitivity))


@contextlib.contextmanager
def _gpu_memory_errors() -> Iterator[None]:
    """A torch CUDA out-of-memory error as `jobs.GPUMemoryError` (its message offers alternatives)."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        raise gpu_memory_error(error) from None


def _network_input(inputs: InputStack) -> Any:
    """The (1, C, D, H, W) float32 tensor of an `InputStack` (shares its memory)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(inputs.array))[None]


def load_model(package: Any) -> Any:
    """``package.build()`` in eval mode (float32)."""
    model = package.build()
    return model.float().eval()


def compute_labels(model: Any, inputs: InputStack, package: Any, device: str | None = "auto",
                   cancel: CancelCallback | None = None, progress: ProgressCallback | None = None) -> np.ndarray:
    """The network's label map (argmax over the logits) on the reference grid, uint8/int32 (D, H, W)."""
    from ..inference import Inferer

    check_cancel(cancel)
    report(progress, 0.1, "Running the network")
    def window_done(done: int, total: int) -> None:  # sliding windows only: one pass reports nothing
        report(progress, 0.1 + 0.85 * done / total, f"Running the network: window {done} of {total}")

    with _gpu_memory_errors():
        labels = Inferer.for_package(model, package, device).logits(_network_input(inputs), window_done).argmax(0)
    check_cancel(cancel)
    classes = len(getattr(package, "class_names", None) or [])
    return labels.astype(np.uint8 if max(classes, int(labels.max(initial=0)) + 1) <= 256 else np.int32)


def trace_case(request: ExplainRequest, package: Any, model: Any) -> Any:
    """One traced forward pass of the request's input (`inference.CaseForward`, open: close it, or
    use it as a context manager), with the request's composite on the request's device."""
    from ..inference import Inferer

    inferer = Inferer.for_package(model, package, request.device)
    with _gpu_memory_errors():
        return inferer.trace(_network_input(request.inputs), package.lrp_composite(request.composite))


def compute_explanation(request: ExplainRequest, package: Any, model: Any = None,
                        progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
                        forward: Any = None) -> ExplainResult:
    """The LRP region explanation and the sequence composition (and, with ``request.cross_check``,
    the kept decision margins and the sequences they flag).

    Args:
        model: the built model (else ``package.build()``); with ``forward``, the model it traced.
        forward: an open `trace_case` of this request's input, composite and device, kept open by
            the caller (no forward pass here; its composition cache is reused); None: one is
            opened here and closed before the cross-check.
    """
    from .. import evaluation
    from ..engine import DEFAULT_TOLERANCE, Target
    from ..inference import Inferer

    check_cancel(cancel)
    report(progress, 0.05, "Building the model")
    model = model if model is not None else load_model(package)
    target = request.target if isinstance(request.target, Target) else Target(int(request.target), request.contrast)
    tolerance = DEFAULT_TOLERANCE if request.tolerance is None else request.tolerance
    check_cancel(cancel)
    traced = contextlib.nullcontext(forward) if forward is not None else trace_case(request, package, model)
    with _gpu_memory_errors():
        with traced as case_forward:
            # The composition first: its C transposed passes also give every voxel's s_a, so the
            # region's explanation then needs its LRP pass only (the other order runs one more
            # transposed pass, on the region's box).
            report(progress, 0.15, "Sequence composition of every voxel")
            composition = case_forward.composition(target, tolerance)
            check_cancel(cancel)
            report(progress, 0.6, f"LRP of {request.region_name}")
            name = request.region_name
            explanation = case_forward.explain({name: request.region}, target, tolerance)[name]
        margin_retained = flagged = None
        if request.cross_check:
            check_cancel(cancel)
            report(progress, 0.8, "Cross-check: each sequence replaced by its mean")
            inferer = Inferer.for_package(model, package, request.device)
            margin_retained = inferer.ablation(_network_input(request.inputs), request.region, target,
                                               margin_region=request.region).margin_retained
            flagged = evaluation.relevance_without_sensitivity(explanation.positive_shares, margin_retained)
        decision = _decision_shares(request, package, model, target, progress, cancel) \
            if request.wants_shapley else None
    check_cancel(cancel)
    report(progress, 0.95, "Collecting the results")
    result = ExplainResult.from_explanation(explanation, composition, request.inputs.sequence_names,
                                            request.region_name, margin_retained, flagged)
    if decision is not None:
        from .. import shapley

        result.decision_shares, result.decision_values = decision.shares, decision.values
        result.margin_all, result.margin_none = decision.margin_all, decision.margin_none
        result.without_decision = shapley.relevance_without_decision(result.positive_shares, decision.shares)
    return result


def _decision_shares(request: ExplainRequest, package: Any, model: Any, target: Any,
                     progress: ProgressCallback | None, cancel: CancelCallback | None) -> Any:
    """Region A's `shapley.ShapleyResult`, or None when A holds no voxel predicted as the target
    (there is no decision to share; the cross-check's margins are NaN there too)."""
    from .. import shapley
    from ..inference import Inferer

    check_cancel(cancel)
    x = _network_input(request.inputs)
    inferer = Inferer.for_package(model, package, request.device)

    def passes(done: int, total: int) -> None:  # between forward passes: report, and stop when asked
        report(progress, 0.85 + 0.1 * done / total, f"Decision shares (Shapley): input {done} of {total}")
        check_cancel(cancel)

    try:
        return shapley.decision_shapley(inferer, x, {request.region_name: request.region}, target,
                                        sequences=request.inputs.sequence_names, progress=passes)[request.region_name]
    except shapley.NoDecisionError:
        return None
