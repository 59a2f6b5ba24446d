"""One reviewer's review state on an MRML scene: the web app's logic, without trame.

A thin layer over the Slicer module's own Qt-free logic (`slicer.module_logic.ModuleLogic`): the
same worker process (`slicer.worker_client.WorkerClient`) runs Segment and Explain, the same
``publish`` functions write the segmentation and the explanation into the scene (the module's
colour table, folder layout and shares table), the same ``shortcuts`` write region A, and
``logic.update_region`` recomputes the shares of a repainted region from the composition map
(no LRP pass). What is added here is only what a browser front end needs: which nodes the
reviewer works on, the jobs in flight, counters that say what ran (`ReviewSession.counters`),
a JSON-able snapshot for the UI and the test endpoint (`ReviewSession.status`), and Export.

``ModuleLogic`` works on ``slicer.mrmlScene``: `use_scene` points that at the web app's scene
(trame-slicer's ``SlicerApp.scene``) before a session is created.
"""
from __future__ import annotations

import os
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CaseSource", "ReviewSession", "TableRow", "use_scene"]

#: The segment the reviewer paints into when no shortcut made one (in the "LRP regions" segmentation).
PAINTED_SEGMENT_NAME = "A: painted"
PAINTED_SEGMENT_COLOR = (1.0, 0.85, 0.1)


def use_scene(scene: Any, module_logics: dict[str, Any] | None = None) -> None:
    """Make ``scene`` the process's ``slicer.mrmlScene`` (what `ModuleLogic` and ``slicer.util`` use) and
    register ``module_logics`` (name -> logic, e.g. ``{"colors": app.color_logic}``) as
    ``slicer.modules.<name>.logic()`` where that name is not taken. One scene per process: one
    server serves one reviewer."""
    import slicer

    from ..slicer.headless import HeadlessModule

    slicer.mrmlScene = scene
    if getattr(slicer, "modules", None) is None:
        slicer.modules = types.SimpleNamespace()
    for name, logic in (module_logics or {}).items():
        if getattr(slicer.modules, name, None) is None:
            setattr(slicer.modules, name, HeadlessModule(name, logic))


@dataclass
class CaseSource:
    """Where the reviewed case comes from: the bundled phantom (nothing set), a case folder, or
    ``NAME=FILE`` sequences (as ``lrpseg explain`` takes them), with an optional reference label."""

    case: str | None = None
    sequences: list[str] = field(default_factory=list)
    reference_label: str | None = None

    @property
    def is_phantom(self) -> bool:
        return self.case is None and not self.sequences


@dataclass
class TableRow:
    """One row of the shares table shown: the sequence and its columns (column name -> value)."""

    sequence: str
    values: dict[str, float]


class ReviewSession:
    """The review of one case by one reviewer (main thread / the server's event loop only).

    Args:
        model_path: a ``.lrpmodel`` folder (what the worker loads).
        source: the case (`CaseSource`).
        device: "auto", "cpu", "cuda" or "cuda:N" (the worker's device).
        sample_folder: where the bundled phantom is generated (default: a temporary folder).

    Attributes:
        logic: the Slicer module's `ModuleLogic` (on ``slicer.mrmlScene``).
        package: the model package's description (``model.json``; no torch here).
        input_nodes / reference_node: the sequence volumes (package order) and the reference.
        truth_node / truth_segment_id: the reference (ground-truth) segment for TP/FN/FP, or None / "".
        predicted_node / predicted_segment_id: the published segmentation and its target-class segment.
        region_node / region_segment_id: region A (a segment of the "LRP regions" segmentation).
        outputs: the published explanation (`publish.ExplainOutputs`), or None.
        shares_source: "" (none yet), "LRP pass" or "composition map" (after a repaint).
        cross_check / decision_shares: what Explain adds to the table (the module's kept decision
            margin; the "decision share (Shapley)" column); both off by default (more network passes).
        counters: ``segment_requests``, ``explain_requests`` (worker requests sent), ``forward_passes``
            (network passes the worker reported for them), ``share_updates`` (repaints answered from
            the composition map), ``exports``.
        last_job_info: the worker's metadata of the last finished job (``seconds``, ``forward_passes``).
    """

    def __init__(self, model_path: str | os.PathLike, source: CaseSource | None = None, device: str = "auto",
                 sample_folder: str | os.PathLike | None = None) -> None:
        from ..slicer.module_logic import ModuleLogic

        self.logic = ModuleLogic()
        self.model_path = str(Path(model_path).resolve())
        self.package = self.logic.readPackageInfo(self.model_path)
        self.source = source or CaseSource()
        self.device = device
        self.sample_folder = sample_folder
        self.target_class = len(self.package.class_names) - 1  # the last class, as `lrpseg explain`
        self.cross_check = False      # Explain also replaces each sequence by its mean (C + 1 passes)
        self.decision_shares = False  # Explain also computes the decision shares (Shapley, 2^C passes)
        self.input_nodes: list[Any] = []
        self.case_files: dict[str, str] = {}
        self.reference_node: Any = None
        self.truth_node: Any = None
        self.truth_segment_id = ""
        self.predicted_node: Any = None
        self.predicted_segment_id = ""
        self.region_node: Any = None
        self.region_segment_id = ""
        self.outputs: Any = None
        self.shown_sequence = ""
        self.opacity = 0.5
        self.shares_source = ""
        self.message = ""
        self.busy = ""  # "Segment" / "Explain" / "Export" while a job runs
        self.counters = {"segment_requests": 0, "explain_requests": 0, "forward_passes": 0, "share_updates": 0,
                         "exports": 0}
        self.last_job_info: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.last_export = ""

    @property
    def scene(self) -> Any:
        return self.logic.scene

    @property
    def class_name(self) -> str:
        return str(self.package.class_names[self.target_class])

    # ---------------------------------------------------------------- the case

    def load_case(self) -> None:
        """Put the case's volumes (and reference segmentation) into the scene."""
        from . import case

        loaded = case.load_into_scene(self, self.source)
        self.input_nodes, self.reference_node = loaded.input_nodes, loaded.reference_node
        self.truth_node, self.truth_segment_id = loaded.truth_node, loaded.truth_segment_id
        self.case_files = dict(loaded.files or {})
        self.message = f"Case loaded: {', '.join(node.GetName() for node in self.input_nodes)}."

    # ---------------------------------------------------------------- Segment

    def start_segment(self) -> tuple[Any, Any]:
        """(job, finish): the worker's prediction, started; call `finish_segment` with both when done."""
        job, finish = self.logic.segmentAsync(self.input_nodes, self.reference_node, self.package, self.device)
        self.counters["segment_requests"] += 1
        return job.start(), finish

    def finish_segment(self, job: Any, finish: Any) -> Any:
        """Publish the prediction (replacing an earlier one) and prepare region A's segmentation."""
        node = finish(job)
        self.last_job_info = dict(job.info)
        self.counters["forward_passes"] += 1  # a prediction is one network pass (per window)
        keep = [self.region_node, self.truth_node]
        self.logic.removeOutputs(self.logic.replacedOutputs(node, keep=keep))
        self.predicted_node = node
        self.predicted_segment_id = node.GetSegmentation().GetSegmentIdBySegmentName(self.class_name)
        if self.region_node is None:
            self.region_node = self.logic.regionSegmentation(None, self.reference_node)
        segmentation = self.region_node.GetSegmentation()
        if not self.region_segment_id or segmentation.GetSegment(self.region_segment_id) is None:
            self.region_segment_id = (segmentation.GetSegmentIdBySegmentName(PAINTED_SEGMENT_NAME)
                                      or segmentation.AddEmptySegment("", PAINTED_SEGMENT_NAME,
                                                                      list(PAINTED_SEGMENT_COLOR)))
        voxels = int(self.predicted_mask().sum())
        self.message = f"Segmented: {voxels} voxels predicted as {self.class_name}. Paint region A or use a shortcut."
        return node

    def predicted_mask(self) -> np.ndarray:
        """The predicted target class, bool (D, H, W) on the reference grid."""
        from ..slicer import mrml

        if self.predicted_node is None or not self.predicted_segment_id:
            return np.zeros(mrml.volume_shape(self.reference_node), dtype=bool)
        return mrml.segment_mask(self.predicted_node, self.predicted_segment_id, self.reference_node)

    # ---------------------------------------------------------------- region A

    def region_mask(self) -> np.ndarray:
        """Region A, bool (D, H, W) on the reference grid (empty when nothing is painted)."""
        from ..slicer import mrml

        if self.region_node is None or not self.region_segment_id:
            return np.zeros(mrml.volume_shape(self.reference_node), dtype=bool)
        return mrml.segment_mask(self.region_node, self.region_segment_id, self.reference_node)

    def region_segments(self) -> list[tuple[str, str]]:
        """(segment ID, name) of every segment of the region segmentation."""
        if self.region_node is None:
            return []
        segmentation = self.region_node.GetSegmentation()
        return [(segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i).GetName())
                for i in range(segmentation.GetNumberOfSegments())]

    def shortcut(self, mode: str) -> str:
        """A region shortcut ("predicted", "lesion" at the crosshair, "errors" = TP, FN and FP against the
        reference label); the written segment becomes region A. Returns the status message."""
        if self.predicted_node is None:
            raise ValueError("press Segment first: the shortcuts start from the predicted segmentation")
        if mode == "errors" and self.truth_node is None:
            raise ValueError("no reference label: start lrpseg review with --reference LABEL (or a case folder "
                             "holding reference_label.*) for TP / FN / FP")
        segment_id, message = self.logic.regionShortcut(mode, self.region_node, self.reference_node,
                                                        self.predicted_node, self.predicted_segment_id,
                                                        self.truth_node, self.truth_segment_id)
        if segment_id:
            self.region_segment_id = segment_id
        self.message = message
        return message

    def select_region(self, segment_id: str) -> None:
        if self.region_node is None or self.region_node.GetSegmentation().GetSegment(segment_id) is None:
            raise ValueError(f"no region segment {segment_id!r}: pick one of the listed segments")
        self.region_segment_id = segment_id

    # ---------------------------------------------------------------- Explain

    def start_explain(self, extras: bool = True) -> tuple[Any, Any]:
        """(job, finish): the worker's explanation of region A, started (refuses an empty region);
        ``extras``: with the cross-check / decision shares when they are switched on."""
        if self.predicted_node is None:
            raise ValueError("press Segment first")
        # Only what is asked for is passed: the defaults are the module's (no cross-check here).
        options = {"crossCheck": True} if extras and self.cross_check else {}
        if extras and self.decision_shares:
            options["decisionShares"] = True
        job, finish = self.logic.explainAsync(self.input_nodes, self.reference_node, self.region_node,
                                              self.region_segment_id, self.package, self.target_class,
                                              device=self.device, **options)
        self.counters["explain_requests"] += 1
        return job.start(), finish

    def finish_explain(self, job: Any, finish: Any) -> Any:
        """Publish the explanation (replacing the earlier one of the same region) and show its strongest map."""
        outputs = finish(job)
        self.last_job_info = dict(job.info)
        self.counters["forward_passes"] += int(job.info.get("forward_passes", 0))
        self.logic.removeOutputs(self.logic.replacedOutputs(outputs))
        self.outputs = outputs
        self.shares_source = "LRP pass"
        self.show_sequence(outputs.sequence_names[self.logic.displayOrder(outputs)[0]])
        self.message = (f"Explained '{self._region_name()}': {outputs.n_used} voxels"
                        + (f", {outputs.n_excluded} excluded" if outputs.n_excluded else "") + "."
                        + (f" {outputs.caution}" if outputs.caution else ""))
        return outputs

    def update_shares(self) -> bool:
        """After a repaint: the shares of the current region A from the composition map (no LRP pass).

        Returns False (and changes nothing) when there is no explanation yet or region A is empty.
        """
        if self.current_outputs() is None or not self.region_mask().any():
            return False
        shares, used, excluded = self.logic.updateRegion(self.region_node, self.region_segment_id,
                                                         self.reference_node)
        self.outputs.shares, self.outputs.n_used, self.outputs.n_excluded = shares, used, excluded
        self.outputs.positive_shares = None  # a repainted region's table holds the signed shares only
        self.shares_source = "composition map"
        self.counters["share_updates"] += 1
        self.message = (f"Region A repainted: shares of '{self._region_name()}' ({used} voxels) from the "
                        "composition map.")
        return True

    def current_outputs(self) -> Any:
        self.outputs = self.logic.currentExplanation()
        return self.outputs

    def show_sequence(self, name: str, opacity: float | None = None) -> None:
        """Show one sequence's relevance map over the reference (the module's colour table)."""
        outputs = self.current_outputs()
        if outputs is None:
            raise ValueError("press Explain first")
        if name not in outputs.sequence_names:
            raise ValueError(f"no relevance map of {name!r}; choose one of {', '.join(outputs.sequence_names)}")
        self.opacity = self.opacity if opacity is None else float(opacity)
        self.logic.showRelevance(outputs.relevance_nodes[outputs.sequence_names.index(name)], self.reference_node,
                                 self.opacity)
        self.shown_sequence = name

    def set_opacity(self, opacity: float) -> None:
        self.opacity = min(1.0, max(0.0, float(opacity)))
        self.logic.setOverlayOpacity(self.opacity)

    def table_rows(self) -> list[TableRow]:
        """The shares table as shown: every numeric column of the module's shares table node (share,
        positive share, the cross-check's margin, and any column the worker's reply adds later, such
        as a decision share), in the order of the table."""
        outputs = self.outputs
        if outputs is None or outputs.table_node is None:
            return []
        table = outputs.table_node.GetTable()
        columns = [table.GetColumn(i) for i in range(table.GetNumberOfColumns())]
        numeric = [column for column in columns if column.GetName() != "sequence" and column.IsNumeric()]
        names = table.GetColumnByName("sequence")
        return [TableRow(names.GetValue(row), {column.GetName(): float(column.GetTuple1(row)) for column in numeric})
                for row in range(table.GetNumberOfRows())]

    def legend(self) -> dict[str, Any]:
        """The shown map's colour legend: the colour table's colours (hex, low to high) and the window."""
        outputs = self.outputs
        if outputs is None or not self.shown_sequence:
            return {}
        node = outputs.relevance_nodes[outputs.sequence_names.index(self.shown_sequence)]
        display = node.GetDisplayNode()
        table = display.GetColorNode()
        colors = []
        for entry in range(0, table.GetNumberOfColors(), 15):  # 18 stops are plenty for a CSS gradient
            rgba = [0.0, 0.0, 0.0, 0.0]
            table.GetColor(entry, rgba)
            colors.append("#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3]))
        half = display.GetWindow() / 2.0
        return {"colors": colors, "low": display.GetLevel() - half, "high": display.GetLevel() + half,
                "table": table.GetName()}

    def _region_name(self) -> str:
        segment = self.region_node.GetSegmentation().GetSegment(self.region_segment_id) if self.region_node else None
        return segment.GetName() if segment is not None else "region A"

    # ---------------------------------------------------------------- Export

    def start_export(self) -> tuple[Any, Any]:
        """(job, finish): the explanation of the current region A for Export (the worker reuses the
        case's traced pass: one LRP pass, no network pass; what ``lrpseg explain`` writes, so no
        cross-check or decision shares)."""
        return self.start_explain(extras=False)

    def finish_export(self, job: Any, finish: Any, folder: str | os.PathLike, overwrite: bool = False) -> dict:
        """Publish the fresh explanation, then write `lrpseg explain`'s files for it into ``folder``."""
        from . import case

        self.finish_explain(job, finish)
        result = job.result()
        summary = case.write_outputs(self, result, folder, overwrite)
        self.counters["exports"] += 1
        self.last_export = str(Path(folder).resolve())
        self.message = f"Exported to {self.last_export}."
        return summary

    # ---------------------------------------------------------------- snapshot

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: what the UI shows and what the browser tests check server-side."""
        rows = self.table_rows()
        region = self.region_mask() if self.reference_node is not None else np.zeros(0, bool)
        predicted = self.predicted_mask() if self.reference_node is not None else np.zeros(0, bool)
        worker = self.logic.worker().worker_info if getattr(self.logic, "_worker", None) is not None else {}
        return {
            "time": time.time(),
            "busy": self.busy,
            "message": self.message,
            "model": self.model_path,
            "sequences": [str(name) for name in self.package.sequences],
            "reference": self.reference_node.GetName() if self.reference_node is not None else "",
            "predicted_voxels": int(predicted.sum()),
            "region_segment": self._region_name() if self.region_node is not None else "",
            "region_voxels": int(region.sum()),
            "region_inside_predicted": int((region & predicted).sum()) if region.size and predicted.size else 0,
            "explained": self.outputs is not None,
            "shares_source": self.shares_source,
            "shares": {row.sequence: row.values.get("share") for row in rows},
            "table": [{"sequence": row.sequence, **row.values} for row in rows],
            "n_used": int(self.outputs.n_used) if self.outputs is not None else 0,
            "shown_sequence": self.shown_sequence,
            "opacity": self.opacity,
            "caution": getattr(self.outputs, "caution", "") if self.outputs is not None else "",
            "counters": dict(self.counters),
            "last_job_info": dict(self.last_job_info),
            "timings": dict(self.timings),
            "last_export": self.last_export,
            "case_files": dict(self.case_files),
            "worker_pid": worker.get("pid"),
        }
