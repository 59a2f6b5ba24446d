"""One traced forward pass of a model on one case, answering any number of LRP questions.

For a fixed forward pass LRP is a linear map L (see `region`), so everything the engine computes
for a case comes from the SAME pass: the prediction y, the normalization s_a = Σ_k c_k y_ka (Lᵀ1)_ka
of every output voxel, any number of region explanations M_A = L w_A, and the per-sequence
composition (Lᵀ1_c)_a / s_a. `TracedForward` runs the network once (once per patch for volumes
larger than one patch) and keeps what it traced between questions:

    with TracedForward(model, x, "epsilon_gamma_box", patch_size=(64, 128, 128)) as traced:
        labels = traced.logits.argmax(1)                        # the prediction, from the traced pass
        maps = traced.explain({"tp": tp, "fn": fn}, target=1)   # one LRP pass per region, no new forward
        composition = traced.composition(target=1)              # no new forward pass
        maps = traced.explain({"tp": repainted}, target=1)      # repainting: one LRP pass, nothing else

Cost per window (the whole volume is one window; only windows touching a region run its LRP):

- forward: once; again only for a window whose traced graph did not fit ``keep_graphs_gib``;
- normalization s_a: one transposed pass per target, cached voxel by voxel; for a region, the pass
  runs on the bounding box of its voxels that lack s_a (`Graph.transpose`'s ``output_box``: each
  convolution computes only what the rest of the pass reads);
- regions: one LRP pass per region of an `explain` call, whatever its size (on CUDA all regions in
  one batch; on the CPU one at a time, which is faster there: see `TracedForward._batch_size`);
- composition: C transposed passes per target (their sum is the normalization's pass when that has
  not run yet), cached; the first layer runs them channel by channel (`Graph.transpose`).

Sliding windows (Gaussian blend ω_pa, see `sliding`): the window outputs are blended linearly, so
s_a = Σ_p ω_pa Σ_k c_k y_pak (L_pᵀ1)_ak, M_A = Σ_p L_p w_p with w_pa = 1[a ∈ A, usable] ω_pa c⊙y_pa / s_a.
The whole volume is the same formula with one window and no ω.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .composites import Composite, resolve_composite
from .graph import Graph
from .region import (DEFAULT_COMPOSITE, DEFAULT_TOLERANCE, RegionExplanation, Target, as_target, check_region,
                     check_tolerance, checked_input, model_on, prepare_graph, region_label, tf32_off)
from .support import bounding_box, is_small, mask_of
from .sliding import (DEFAULT_OVERLAP, DEFAULT_SIGMA_SCALE, Progress, _Blend, _check_overlap, _check_patch_output,
                      _check_shape, _graph_budget, _report, _room_for)

_WHOLE = (slice(None),) * 3  # the one window of a whole-volume pass


def check_chunk(chunk: int | None) -> int | None:
    """``chunk`` (most vectors per batched pass, to bound memory) must be a positive int or None."""
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive integer or None, got {chunk!r}")
    return chunk


def _batches(n: int, chunk: int | None) -> Iterable[range]:
    """range(n) in consecutive pieces of at most ``chunk`` (all at once for None)."""
    step = chunk or max(n, 1)
    return (range(first, min(first + step, n)) for first in range(0, n, step))


def _inverse(total: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """1/total where ``used``, 0 elsewhere — never a division by zero."""
    return torch.where(used, 1.0 / torch.where(used, total, 1.0), torch.zeros_like(total))


class _Scores:
    """The seed's normalization for one target over the output grid (D, H, W), accumulated window
    by window: s_a (``total``) and the relevance injected for a, Σ_p ω_pa Σ_k |c_k y_pak|
    (``scale``). A voxel's values are final once every window containing it has added its share:
    windows in ``done`` have added it for all their voxels, those in ``partial`` for the voxels of
    their mask (an explanation needs its region's voxels only)."""

    def __init__(self, target: Target, grid: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.target = target
        self.coefficients: torch.Tensor | None = None
        self.total = torch.zeros(grid, dtype=dtype, device=device)
        self.scale = torch.zeros_like(self.total)
        self.done: set[int] = set()
        self.partial: dict[int, torch.Tensor] = {}  # window → bool (d, h, w) on its output

    def missing(self, p: int, need: torch.Tensor) -> torch.Tensor | None:
        """The voxels of ``need`` (bool on window p's output) that lack window p's share; None if
        there are none."""
        if p in self.done:
            return None
        added = self.partial.get(p)
        missing = need if added is None else need & ~added
        return missing if missing.any() else None

    def numerator(self, logits: torch.Tensor) -> torch.Tensor:
        """c⊙y (1, K, ...) for window logits y (1, K, ...)."""
        if self.coefficients is None:  # K is known once a window is traced
            self.coefficients = self.target.coefficients(logits.shape[1], logits.dtype, logits.device)
        return self.coefficients.view(1, -1, 1, 1, 1) * logits

    def conservation(self) -> torch.Tensor:
        """s_a / Σ|c⊙y_a|: the fraction of its score voxel a's map keeps (0 where nothing is injected)."""
        positive = self.scale > 0
        return torch.where(positive, self.total / torch.where(positive, self.scale, 1.0),
                           torch.zeros_like(self.total))

    def usable(self, conservation: torch.Tensor, tolerance: float) -> torch.Tensor:
        """Voxels whose map keeps at least ``tolerance`` of their score (bool, the output grid)."""
        return (self.scale > 0) & (self.total != 0) & (conservation.abs() >= tolerance)


def _computes(method: Callable) -> Callable:
    """Public methods: refuse a closed object, and compute with TF32 off (restored after each call,
    so a long-lived object leaves the process's settings alone between calls)."""

    @functools.wraps(method)
    def wrapper(self: "TracedForward", *args, **kwargs):
        if self._closed:
            raise RuntimeError("this TracedForward is closed; create a new one for more explanations")
        with tf32_off():
            return method(self, *args, **kwargs)
    return wrapper


class TracedForward:
    """One traced forward pass of ``model`` on ``x``, answering any number of LRP questions.

    The network runs lazily, on a window's first use, and each window's graph is kept for the
    next question (sliding windows: while they fit ``keep_graphs_gib``; the most recent graph is
    always kept). Use it as a context manager, or call `close` (the model goes back to its device
    and the graphs are freed). The pass is a snapshot: do not change the model's weights while
    the object is open.

    Args:
        model: network in eval mode returning logits (1, K, D', H', W'); a tuple's first element
            is used (deep supervision).
        x: input (1, C, D, H, W), C sequences; copied to ``device`` in the model's dtype.
        composite: a name from `COMPOSITES` or a `Composite`; missing box bounds come from the
            WHOLE input's per-sequence range (also with sliding windows).
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
        patch_size: None: the network runs on the whole volume. (d, h, w) or one int: Gaussian-
            blended sliding windows (`sliding.sliding_window_logits`); the output grid must then
            equal the input grid. A volume that fits inside one patch runs whole, unless
            ``whole_if_fits=False`` (then a volume smaller than the patch is refused).
        overlap, sigma_scale: the blend, as in `sliding.sliding_window_logits`.
        keep_graphs_gib: memory the kept window graphs may hold (`Graph.nbytes`); None = half the
            free memory of the CUDA device, or a quarter of the available RAM on the CPU; 0 keeps
            only the most recent one. A window whose graph was not kept is traced again when needed.
        whole_if_fits: see ``patch_size``.

    Attributes:
        forward_passes: traced forward passes of the network so far (one per window, plus re-traces).
        device: the compute device.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, composite: str | Composite = DEFAULT_COMPOSITE,
                 device: str | torch.device | None = None, *, patch_size: Sequence[int] | int | None = None,
                 overlap: float = DEFAULT_OVERLAP, sigma_scale: float = DEFAULT_SIGMA_SCALE,
                 keep_graphs_gib: float | None = None, whole_if_fits: bool = True) -> None:
        x_dev, self.device = checked_input(model, x, device)
        if x_dev.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            x_dev = x_dev.clone()  # re-traces must see this input even if the caller changes x later
        self._model, self._x = model, x_dev
        self._composite = resolve_composite(composite, x_dev)  # once, from the whole volume
        self._blend = self._make_blend(patch_size, overlap, sigma_scale, whole_if_fits)
        self._windows = [self._blend.slices(s) for s in self._blend.starts] if self._blend else [_WHOLE]
        self._budget = _graph_budget(keep_graphs_gib, self.device)
        self._kept: dict[int, Graph] = {}
        self._kept_bytes = 0
        self._recent: tuple[int, Graph] | None = None
        self._seen: set[int] = set()        # windows whose logits are in the prediction
        self._blended: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None
        self._scores: dict[Target, _Scores] = {}
        self._compositions: dict[Target, torch.Tensor] = {}
        self.forward_passes = 0
        self._retraces = 0
        self._resources = contextlib.ExitStack()
        self._resources.enter_context(model_on(model, self.device))  # last: nothing above holds the model
        self._closed = False

    def _make_blend(self, patch_size, overlap: float, sigma_scale: float, whole_if_fits: bool) -> _Blend | None:
        """The sliding-window blend, or None for a whole-volume pass."""
        if patch_size is None:
            return None
        _check_overlap(overlap)
        spatial = tuple(self._x.shape[2:])
        if whole_if_fits and all(n <= p for n, p in zip(spatial, _check_shape(patch_size, "patch_size"))):
            return None
        return _Blend(spatial, patch_size, overlap, sigma_scale, self._x.dtype, self.device)

    # -- lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> "TracedForward":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Free the graphs and caches and put the model back on its device (idempotent)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._kept.clear()
        self._recent = self._blended = None
        self._scores.clear()
        self._compositions.clear()
        self._resources.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.forward_passes} forward passes"
        return (f"TracedForward({tuple(self._x.shape)}, {self._composite.name}, {self.device}, "
                f"{self.windows} window(s), {state})")

    # -- windows and their graphs ----------------------------------------------------------------
    @property
    def windows(self) -> int:
        """Number of windows: 1 for a whole-volume pass."""
        return len(self._windows)

    @property
    @_computes
    def output_shape(self) -> tuple[int, int, int]:
        """The output grid (D, H, W) regions live on (a whole-volume pass runs the network to know it)."""
        if self._blend is not None:
            return tuple(self._x.shape[2:])
        return tuple(self._graph(0).logits.shape[2:])

    def _omega(self, p: int) -> torch.Tensor | None:
        """Blend weights ω_p (d, h, w) of window p; None for a whole-volume pass (ω = 1)."""
        return None if self._blend is None else self._blend.omega(self._blend.starts[p])

    def _holds(self, p: int) -> bool:
        return p in self._kept or (self._recent is not None and self._recent[0] == p)

    def _held_first(self, windows: Iterable[int]) -> list[int]:
        """``windows`` with those whose graph is held first (no re-trace if the budget is tight)."""
        return sorted(windows, key=lambda p: not self._holds(p))

    def _graph(self, p: int) -> Graph:
        """The traced graph of window p: a held one, or traced now."""
        if p in self._kept:
            return self._kept[p]
        if self._recent is not None and self._recent[0] == p:
            return self._recent[1]
        self._retire_recent()  # before tracing: a graph that is not kept is freed first
        graph = self._trace(p)
        self._recent = (p, graph)
        return graph

    def _retire_recent(self) -> None:
        """Keep the most recent graph if it fits the budget (and the device keeps room for the next
        window's graph and its passes); otherwise drop it."""
        if self._recent is None:
            return
        p, graph = self._recent
        self._recent = None
        if self._budget > 0:
            size = graph.nbytes()
            if self._kept_bytes + size <= self._budget and _room_for(3 * size, self.device):
                self._kept[p] = graph
                self._kept_bytes += size

    def _trace(self, p: int) -> Graph:
        """Run the network on window p (one forward pass) and add its logits to the prediction."""
        if self._model.training:
            raise ValueError("the model was put in training mode while this TracedForward is open; "
                             "call model.eval() first")
        graph = prepare_graph(self._model, self._x[(slice(None), slice(None)) + self._windows[p]], self._composite)
        if self._blend is not None:
            _check_patch_output(graph.logits, self._blend.patch)
        self.forward_passes += 1
        if p in self._seen:
            self._retraces += 1
        else:
            self._seen.add(p)
            self._add_to_prediction(p, graph.logits)
        return graph

    def _add_to_prediction(self, p: int, logits: torch.Tensor) -> None:
        """Y = Σ_p g_p y_p / Σ_p g_p, accumulated as windows are first traced."""
        if self._blend is None:
            self._blended = logits
            return
        if self._blended is None:
            self._blended = logits.new_zeros((1, logits.shape[1]) + tuple(self._x.shape[2:]))
        self._blended[(0, slice(None)) + self._windows[p]] += self._blend.importance * logits[0]

    # -- the prediction --------------------------------------------------------------------------
    @property
    @_computes
    def logits(self) -> torch.Tensor:
        """The prediction (1, K, D, H, W) on the CPU, in the model's dtype, from the traced pass:
        the model output, or the Gaussian-blended windows (`sliding.sliding_window_logits`, up to
        the order of summation). Traces the windows not traced yet. A copy: changing it changes
        nothing here."""
        if self._logits is None:
            for p in self._held_first(range(self.windows)):
                if p not in self._seen:
                    self._graph(p)
            blended = self._blended if self._blend is None else self._blended / self._blend.weight_sum
            # A copy even on the CPU: the whole-volume logits are the graph's, which explanations read.
            self._logits, self._blended = blended.to("cpu", copy=True), None
        return self._logits.clone()

    # -- normalization ---------------------------------------------------------------------------
    def _scores_for(self, target: Target) -> _Scores:
        if target not in self._scores:
            self._scores[target] = _Scores(target, self.output_shape, self._x.dtype, self.device)
        return self._scores[target]

    def _normalize(self, scores: _Scores, p: int, graph: Graph, v: torch.Tensor | None = None,
                   need: torch.Tensor | None = None) -> None:
        """Add window p's share of s_a and of the injected relevance for the voxels of ``need``
        (bool on the window's output; None: all) that lack it, from one transposed pass — run on
        the bounding box of those voxels when that is small (`Graph.transpose`'s ``output_box``).
        ``v``: Lᵀ1 (1, K, d, h, w) of the whole window when the caller already has it (no pass then)."""
        if p in scores.done:
            return
        spatial, added, box = tuple(graph.logits.shape[2:]), scores.partial.get(p), None
        if need is not None and v is None:
            missing = scores.missing(p, need)
            if missing is None:  # all added before
                return
            box = bounding_box(missing)
            if not is_small(box, spatial):
                box = None
        if v is None:
            ones = torch.ones(graph.input_shape, dtype=self._x.dtype, device=self.device)
            v = graph.transpose(ones, output_box=box)
        numerator = scores.numerator(graph.logits)
        total, scale = (numerator * v).sum(1)[0], numerator.abs().sum(1)[0]
        # The voxels this pass adds: its box's (v is exact there only), less those added before.
        fresh = None if box is None else mask_of(box, spatial, self.device)
        if added is not None:
            fresh = ~added if fresh is None else fresh & ~added
        if fresh is not None:
            total, scale = torch.where(fresh, total, 0.0), torch.where(fresh, scale, 0.0)
        omega = self._omega(p)
        if omega is not None:
            total, scale = omega * total, omega * scale
        scores.total[self._windows[p]] += total
        scores.scale[self._windows[p]] += scale
        added = fresh if added is None else added | fresh
        if added is None or bool(added.all()):
            scores.done.add(p)
            scores.partial.pop(p, None)
        else:
            scores.partial[p] = added

    def _batch_size(self, chunk: int | None) -> int | None:
        """Vectors per batched pass: ``chunk``, or for None one on the CPU (batched full-resolution
        tensors cost more memory traffic there than batching saves; bench_engine.py --chunks) and
        all at once on CUDA."""
        return 1 if chunk is None and self.device.type == "cpu" else chunk

    # -- region explanations ---------------------------------------------------------------------
    def explain(self, regions: Mapping[str, Any], target: int | Target = 1, tolerance: float = DEFAULT_TOLERANCE,
                *, chunk: int | None = None, progress: Progress | None = None) -> dict[str, RegionExplanation]:
        """The seed's M_A = Σ_{a∈A} M_a / ΣM_a for each region, from one forward pass and one LRP
        pass per region (per window; on CUDA one batched pass for all regions).

        Args:
            regions: name → bool mask (D, H, W) on the output grid (tensor or numpy).
            target: class index or `Target`.
            tolerance: exclude voxels whose map keeps less than this fraction of their score.
            chunk: at most this many regions per LRP pass (memory); None: one per pass on the
                CPU (each pass then keeps its region's own support, see `LinearLayer.adjoint`;
                measured faster), all at once on CUDA.
            progress: ``progress(done, total)`` after each window step (normalization sweep over
                windows not yet normalized for this target, then the LRP sweep).

        Returns:
            name → `RegionExplanation` (tensors on the CPU; relevance (C, D, H, W) on the input
            grid), each exactly what `explain_region` / `sliding_explain_region` returns for it.

        Raises:
            ValueError: bad masks, an empty region or one whose voxels are all excluded (naming it),
                target out of range, bad tolerance or chunk.
        """
        if not isinstance(regions, Mapping) or not regions:
            raise ValueError("regions must be a non-empty mapping of name → (D, H, W) mask, e.g. {'tp': mask}")
        results = self._explain(list(regions.items()), as_target(target), check_tolerance(tolerance),
                                self._batch_size(check_chunk(chunk)), progress)
        return dict(zip(regions, results))

    def explain_region(self, region, target: int | Target = 1, tolerance: float = DEFAULT_TOLERANCE, *,
                       progress: Progress | None = None) -> RegionExplanation:
        """`explain` for one unnamed region, with the errors of the function `explain_region`."""
        return self._explain([(None, region)], as_target(target), check_tolerance(tolerance), None, progress)[0]

    @_computes
    def _explain(self, named: list[tuple[Any, Any]], target: Target, tolerance: float, chunk: int | None,
                 progress: Progress | None) -> list[RegionExplanation]:
        """`explain` for (name, mask) pairs; a name of None gives the unnamed errors of `explain_region`."""
        masks = [check_region(mask, self.output_shape, self.device, name) for name, mask in named]
        touching = [{p for p, window in enumerate(self._windows) if mask[window].any()} for mask in masks]
        union = sorted(set().union(*touching))
        scores = self._scores_for(target)
        needs = {p: functools.reduce(torch.logical_or, [m[self._windows[p]] for m, t in zip(masks, touching) if p in t])
                 for p in union}
        pending = [p for p in union if scores.missing(p, needs[p]) is not None]
        steps, retraces = len(pending) + len(union), self._retraces
        for done, p in enumerate(pending, 1):  # s_a of a needs every window containing a
            self._normalize(scores, p, self._graph(p), need=needs[p])
            _report(progress, done, steps)

        conservation = scores.conservation()
        usable = scores.usable(conservation, tolerance)
        used = [self._check_used(mask & usable, mask, name, tolerance) for (name, _), mask in zip(named, masks)]
        inverses = [_inverse(scores.total, u) for u in used]
        relevance = [self._x.new_zeros(self._x.shape[1:]) for _ in masks]
        # Reversed: the last graph of the normalization sweep is still held.
        for done, p in enumerate(self._held_first(reversed(union)), len(pending) + 1):
            self._relevance(p, scores, [(i, inverses[i]) for i in range(len(masks)) if p in touching[i]],
                            relevance, chunk)
            _report(progress, done, steps)

        def windows_run(touched: set[int]) -> dict[str, float]:
            if self._blend is None:
                return {}
            return {"patches_run": float(len(touched)), "patches_total": float(self.windows),
                    "patches_retraced": float(self._retraces - retraces)}

        return [self._summarize(r, mask, u, usable, conservation, target, tolerance, windows_run(t))
                for r, mask, u, t in zip(relevance, masks, used, touching)]

    @staticmethod
    def _check_used(used: torch.Tensor, region: torch.Tensor, name: Any, tolerance: float) -> torch.Tensor:
        if not used.any():
            count = int(region.sum())
            voxels = f"{count} region voxels" if name is None else f"{count} voxels of {region_label(name)}"
            raise ValueError(f"all {voxels} were excluded: their LRP maps keep less than {tolerance:g} of the "
                             "target score (is the target class present there?)")
        return used

    def _relevance(self, p: int, scores: _Scores, rows: list[tuple[int, torch.Tensor]],
                   relevance: list[torch.Tensor], chunk: int | None) -> None:
        """One LRP pass on window p for a batch of regions: row i starts from c⊙y_p ⊙ ω_p / s on
        region i's used voxels (``rows``: (region index, 1/s or 0 on the output grid))."""
        window, omega = self._windows[p], self._omega(p)
        weights = []
        for i, inverse in rows:
            w = inverse[window] if omega is None else omega * inverse[window]
            if w.any():  # a window whose region voxels are all excluded contributes nothing
                weights.append((i, w))
        if not weights:
            return
        graph = self._graph(p)
        numerator = scores.numerator(graph.logits)
        for batch in _batches(len(weights), chunk):
            r = numerator * torch.stack([weights[j][1] for j in batch]).unsqueeze(1)  # (N, K, d, h, w)
            maps = graph.relevance(r)                                                # (N, C, d, h, w)
            for j, m in zip(batch, maps):
                relevance[weights[j][0]][(slice(None),) + window] += m

    def _summarize(self, relevance: torch.Tensor, region: torch.Tensor, used: torch.Tensor, usable: torch.Tensor,
                   conservation: torch.Tensor, target: Target, tolerance: float,
                   extra: dict[str, float]) -> RegionExplanation:
        """M_A (C, D, H, W) with its shares and conservation checks, on the CPU."""
        n_used, n_region = int(used.sum()), int(region.sum())
        total = relevance.sum()
        per_sequence = relevance.flatten(1).sum(1)
        positive = relevance.clamp(min=0).flatten(1).sum(1)
        conserved = conservation[used]
        diagnostics = {
            "relevance_sum": float(total),
            "conservation_error": float((total - n_used).abs() / n_used),
            "mean_conserved_fraction": float(conserved.mean()),
            "min_abs_conserved_fraction": float(conserved.abs().min()),
            **extra,
        }
        return RegionExplanation(
            relevance=relevance.cpu(),
            sequence_shares=(per_sequence / total).cpu() if total != 0 else torch.zeros_like(per_sequence).cpu(),
            positive_shares=(positive / positive.sum()).cpu() if positive.sum() > 0 else positive.cpu(),
            n_used=n_used, n_excluded=n_region - n_used, excluded=(region & ~usable).cpu(),
            target=target, composite=self._composite.name, tolerance=tolerance, diagnostics=diagnostics)

    # -- per-sequence composition ----------------------------------------------------------------
    @_computes
    def composition(self, target: int | Target = 1, tolerance: float = DEFAULT_TOLERANCE, chunk: int | None = None,
                    *, progress: Progress | None = None) -> torch.Tensor:
        """For every output voxel a, the share of its normalized map M_a/ΣM_a in each input sequence,
        Σ_p ω_pa Σ_k c_k y_pak (L_pᵀ1_c)_ak / s_a, from C transposed passes per window (batches of
        ``chunk``; None: one sequence per pass on the CPU, where batched full-resolution tensors
        cost more memory traffic than batching saves (bench/bench_engine.py --chunks), all at once on
        CUDA), cached per target; ``progress(done, total)`` counts windows.

        Returns:
            (C, D, H, W) over the output grid, on the CPU. Usable voxels' shares sum to 1; excluded
            ones are all zero, so `region_shares(composition, A)` equals the ``sequence_shares``
            (and counts) of `explain` for any A, with no new pass.
        """
        target, tolerance, chunk = as_target(target), check_tolerance(tolerance), check_chunk(chunk)
        chunk = self._batch_size(chunk)
        scores = self._scores_for(target)
        numerators = self._compositions.get(target)
        if numerators is None:
            channels = self._x.shape[1]
            numerators = self._x.new_zeros((channels,) + self.output_shape)
            order = self._held_first(range(self.windows))
            for done, p in enumerate(order, 1):
                self._add_sequence_numerators(numerators, scores, p, chunk)
                _report(progress, done, len(order))
            self._compositions[target] = numerators
        usable = scores.usable(scores.conservation(), tolerance)
        return (numerators * _inverse(scores.total, usable)).cpu()

    def _add_sequence_numerators(self, numerators: torch.Tensor, scores: _Scores, p: int, chunk: int | None) -> None:
        """numerators[c] += ω_p Σ_k c_k y_pk (L_pᵀ1_c)_k, the indicators 1_c carried in batches (and
        window p's share of s_a if not done yet). The graph is fetched here, so that no caller holds
        it while the next window is traced. Σ_c 1_c = 1, so Lᵀ1 for s_a is the sum of the batch's
        rows: no pass of its own."""
        graph = self._graph(p)
        numerator = scores.numerator(graph.logits)
        window, omega = self._windows[p], self._omega(p)
        v_all = None  # Σ_c Lᵀ1_c = Lᵀ1, while window p is not normalized yet
        ones = self._x.new_ones((1,) + tuple(graph.input_shape[1:]))
        for batch in _batches(numerators.shape[0], chunk):
            v = graph.transpose(ones, channels=batch)  # (len(batch), K, d, h, w): row j is Lᵀ1_c, c = batch[j]
            if p not in scores.done:
                v_all = v.sum(0, keepdim=True) if v_all is None else v_all + v.sum(0, keepdim=True)
            share = (numerator * v).sum(1)  # (len(batch), d, h, w)
            numerators[(slice(batch.start, batch.stop),) + window] += share if omega is None else omega * share
        self._normalize(scores, p, graph, v_all)
