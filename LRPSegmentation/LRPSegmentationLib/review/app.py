"""The browser UI of ``lrpseg review``: trame-slicer's views and Segment Editor around a `ReviewSession`.

Layout: a toolbar (Segment, the paint / erase tools, the region shortcuts, Explain, Export), Slicer's
axial, coronal and sagittal slice views (trame-slicer renders them on the server and streams
images), and a side panel with the status line, region A's segment, the relevance map selector,
opacity, the colour legend and the shares table.

Everything the buttons do is a `ReviewSession` call; this module only moves values between the
session and trame's state. Segment, Explain and Export run in the worker process; the event loop
polls the job (`_wait`) so the page stays live. Painting region A (trame-slicer's paint / erase
effects on the "LRP regions" segmentation) triggers a share update from the composition map a
moment after the stroke (`_on_region_modified`).

With ``LRPSEG_REVIEW_DEBUG=1`` in the environment (tests only; never on by default) the server also
answers ``GET /lrpseg/status`` with `ReviewSession.status` as JSON.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .session import ReviewSession

__all__ = ["DEBUG_ENV", "ReviewApp", "STATUS_PATH"]

log = logging.getLogger("LRPSegmentation.review")

#: Environment variable that enables the status endpoint (tests).
DEBUG_ENV = "LRPSEG_REVIEW_DEBUG"
#: The status endpoint's path.
STATUS_PATH = "/lrpseg/status"
#: Seconds after the last paint stroke before the shares are recomputed (strokes come in bursts).
_REPAINT_DELAY_S = 0.3
#: How often a running job is polled (seconds).
_POLL_S = 0.1
#: The paint / erase brush's default diameter (mm): about two voxels of the demo model's grid.
_BRUSH_MM = 8.0
_SHARE_COLUMNS = {"share": "LRP share", "positive share": "positive share"}


def _percent(value: float) -> str:
    return f"{100.0 * value:.1f} %"


class ReviewApp:
    """One trame server with one Slicer scene and one `ReviewSession` (one reviewer).

    Args:
        server: a trame server (``trame.app.get_server()``).
        session_factory: builds the session once ``slicer.mrmlScene`` is this app's scene.
        export_root: where Export creates its ``review-export-<time>`` folders.
        token: the access token the page was opened with (kept in the status endpoint's check).
    """

    def __init__(self, server: Any, session_factory: Any, export_root: str | os.PathLike = ".",
                 token: str | None = None) -> None:
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.segmentation import SegmentationOverwriteMode

        from .session import use_scene

        self.server = server
        self.state, self.ctrl = server.state, server.controller
        self.export_root = Path(export_root)
        self.token = token
        server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        use_scene(self.slicer_app.scene, {"colors": self.slicer_app.color_logic,
                                         "volumes": self.slicer_app.volumes_logic,
                                         "segmentations": self.slicer_app.segmentations_logic,
                                         "subjecthierarchy": self.slicer_app.subject_hierarchy_logic})
        register_rca_factories(self.slicer_app.view_manager, server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, server)
        self.layout_manager.register_layout_dict({"Review": _review_layout()})
        self.layout_manager.set_layout("Review")
        self.editor = self.slicer_app.segmentation_editor
        self.editor.set_overwrite_mode(SegmentationOverwriteMode.ALLOW_OVERLAP)  # shortcut segments stay intact
        self.editor.segmentation_modified.connect(self._on_region_modified)
        self._repaint_handle: asyncio.TimerHandle | None = None
        self._editing_bound = False
        self.session: ReviewSession = session_factory()
        self.session.load_case()
        self._show_case()
        self._init_state()
        self._build_ui()
        if os.environ.get(DEBUG_ENV) == "1":
            self.ctrl.on_server_bind.add(self._add_status_route)

    # ---------------------------------------------------------------- state <-> session

    def _init_state(self) -> None:
        state = self.state
        state.update({
            "busy": "", "progress": 0, "message": self.session.message, "tool": "none",
            "segmented": False, "explained": False, "has_reference": self.session.truth_node is not None,
            "region_items": [], "region_id": "", "sequence_items": [], "shown_sequence": "", "opacity": 0.5,
            "legend": {}, "brush_mm": _BRUSH_MM, "cross_check": False, "decision_shares": False, "table_headers": [], "table_rows": [], "shares_source": "",
            "last_export": "",
        })
        state.change("shown_sequence")(self._on_sequence)
        state.change("opacity")(self._on_opacity)
        state.change("region_id")(self._on_region_selected)
        state.change("brush_mm")(self._on_brush)
        state.change("cross_check", "decision_shares")(self._on_explain_options)

    def _sync(self) -> None:
        """Copy what the session knows into the page's state."""
        session = self.session
        rows = session.table_rows()
        columns = list(rows[0].values) if rows else []
        with self.state:
            self.state.message = session.message
            self.state.busy = session.busy
            self.state.segmented = session.predicted_node is not None
            self.state.explained = session.outputs is not None
            self.state.region_items = [{"title": name, "value": segment_id}
                                       for segment_id, name in session.region_segments()]
            self.state.region_id = session.region_segment_id
            self.state.sequence_items = list(session.outputs.sequence_names) if session.outputs is not None else []
            self.state.shown_sequence = session.shown_sequence
            self.state.legend = session.legend()
            self.state.shares_source = session.shares_source
            self.state.table_headers = ["sequence"] + [_SHARE_COLUMNS.get(column, column) for column in columns]
            # Shares (LRP, positive, and any decision share a later worker reply adds) in %, others as numbers.
            self.state.table_rows = [[row.sequence] + [_percent(row.values[column]) if "share" in column
                                                       else f"{row.values[column]:.3f}" for column in columns]
                                     for row in rows]
            self.state.last_export = session.last_export

    def _report(self, error: BaseException) -> None:
        self.session.message = f"{type(error).__name__ if not isinstance(error, ValueError) else 'Error'}: {error}"
        log.info("review: %s", self.session.message)
        self._sync()

    # ---------------------------------------------------------------- the views

    def _show_case(self) -> None:
        session = self.session
        display = self.slicer_app.display_manager
        display.show_volume_in_slice_background(session.reference_node)
        display.show_volume_in_slice_foreground(None)
        if session.truth_node is not None:  # the reference label is for TP/FN/FP, not to look at
            session.truth_node.GetDisplayNode().SetVisibility(False)
        for view in self.slicer_app.view_manager.get_slice_views():
            view.fit_view_to_content()

    def _center_views_on(self, mask: Any, zoom: float = 2.0) -> None:
        """Centre every slice view on the mask's centre of mass (e.g. the predicted lesion), zoomed in
        ``zoom`` times from the whole volume."""
        import numpy as np

        from ..slicer import mrml

        if not mask.any():
            return
        k, j, i = (float(v) for v in np.argwhere(mask).mean(axis=0))
        ras = mrml.ijk_to_ras_matrix(self.session.reference_node) @ np.array([i, j, k, 1.0])
        crosshair = self.session.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:  # "This lesion" looks there until Shift + mouse move places it elsewhere
            crosshair.SetCrosshairRAS(*ras[:3])
        for view in self.slicer_app.view_manager.get_slice_views():
            view.fit_view_to_content()  # the page has given the views their size by now
            slice_node = view.get_view_node()
            width, height, depth = slice_node.GetFieldOfView()
            slice_node.SetFieldOfView(width / zoom, height / zoom, depth)
            slice_node.JumpSliceByCentering(*ras[:3])

    def _bind_region_editing(self) -> None:
        """Point trame-slicer's Segment Editor at region A's segment."""
        session = self.session
        if session.region_node is None:
            return
        if not self._editing_bound:
            self.editor.set_active_segmentation(session.region_node, session.reference_node)
            self._editing_bound = True
        self.editor.set_active_segment_id(session.region_segment_id)

    # ---------------------------------------------------------------- buttons

    def segment(self) -> None:
        self._run("Segment", self.session.start_segment, self._segmented)

    def _segmented(self, job: Any, finish: Any) -> None:
        node = self.session.finish_segment(job, finish)
        node.GetDisplayNode().SetVisibility2DFill(False)  # outline only: the overlay stays readable
        self.session.region_node.GetDisplayNode().SetVisibility2DFill(False)  # region A as an outline too
        self._bind_region_editing()
        self._center_views_on(self.session.predicted_mask())

    def explain(self) -> None:
        self.session.timings["explain_clicked"] = time.time()
        self._run("Explain", self.session.start_explain, self._explained)

    def _explained(self, job: Any, finish: Any) -> None:
        self.session.finish_explain(job, finish)
        self.session.timings["explain_published"] = time.time()
        self.session.timings["explain_seconds"] = (self.session.timings["explain_published"]
                                                   - self.session.timings["explain_clicked"])

    def export(self) -> None:
        folder = self.export_root / datetime.datetime.now().strftime("review-export-%Y%m%d-%H%M%S-%f")

        def exported(job: Any, finish: Any) -> None:
            self.session.finish_export(job, finish, folder)

        self._run("Export", self.session.start_export, exported)

    def shortcut(self, mode: str) -> None:
        if self.session.busy:
            return
        try:
            self.session.shortcut(mode)
            self._bind_region_editing()
            self.session.update_shares()
        except (ValueError, RuntimeError) as error:
            self._report(error)
            return
        self._sync()

    def set_tool(self, tool: str) -> None:
        """"paint", "erase" or "none" (trame-slicer's Segment Editor effects on region A)."""
        from trame_slicer.segmentation import SegmentationEffectErase, SegmentationEffectNoTool, SegmentationEffectPaint

        effects = {"paint": SegmentationEffectPaint, "erase": SegmentationEffectErase, "none": SegmentationEffectNoTool}
        if tool != "none" and self.session.region_node is None:
            self._report(ValueError("press Segment first: region A is painted on the segmented case"))
            return
        self._bind_region_editing()
        effect = self.editor.set_active_effect_type(effects[tool])
        if tool != "none":
            self._set_brush(effect)
        with self.state:
            self.state.tool = tool

    def _set_brush(self, effect: Any = None, brush_mm: float | None = None) -> None:
        from trame_slicer.segmentation.paint_effect_parameters import BrushDiameterMode

        effect = effect or self.editor.active_effect
        if hasattr(effect, "set_brush_diameter"):
            effect.set_brush_diameter(float(brush_mm or self.state.brush_mm), BrushDiameterMode.Absolute)

    def _on_brush(self, brush_mm: float = _BRUSH_MM, **_: Any) -> None:
        self._set_brush(brush_mm=brush_mm)

    def _on_sequence(self, shown_sequence: str = "", **_: Any) -> None:
        if shown_sequence and shown_sequence != self.session.shown_sequence and self.session.outputs is not None:
            try:
                self.session.show_sequence(shown_sequence)
            except ValueError as error:
                self._report(error)
                return
            self._sync()

    def _on_opacity(self, opacity: float = 0.5, **_: Any) -> None:
        if self.session.outputs is not None and float(opacity) != self.session.opacity:
            self.session.set_opacity(float(opacity))

    def _on_region_selected(self, region_id: str = "", **_: Any) -> None:
        if region_id and region_id != self.session.region_segment_id:
            try:
                self.session.select_region(region_id)
                self._bind_region_editing()
                self.session.update_shares()
            except ValueError as error:
                self._report(error)
                return
            self._sync()

    def _on_explain_options(self, cross_check: bool = False, decision_shares: bool = False, **_: Any) -> None:
        self.session.cross_check, self.session.decision_shares = bool(cross_check), bool(decision_shares)

    def _on_region_modified(self, *_: Any) -> None:
        """A paint / erase stroke (or a shortcut) changed the region segmentation: update the shares soon."""
        if self.session.busy or self.session.outputs is None:
            return
        loop = asyncio.get_event_loop()
        if self._repaint_handle is not None:
            self._repaint_handle.cancel()
        self._repaint_handle = loop.call_later(_REPAINT_DELAY_S, self._update_shares)

    def _update_shares(self) -> None:
        self._repaint_handle = None
        try:
            self.session.update_shares()
        except (ValueError, RuntimeError) as error:
            self._report(error)
            return
        self._sync()

    # ---------------------------------------------------------------- jobs

    def _run(self, label: str, start: Any, finished: Any) -> None:
        if self.session.busy:
            return
        try:
            job, finish = start()
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            self._report(error)
            return
        self.session.busy = label
        self.session.message = f"{label}: starting the computation"
        self._sync()
        from trame_server.utils.asynchronous import create_task

        create_task(self._wait(label, job, finish, finished))

    async def _wait(self, label: str, job: Any, finish: Any, finished: Any) -> None:
        while not job.done:
            percent, message = self.session.logic.jobProgress(job)
            with self.state:
                self.state.progress, self.state.message = percent, f"{label}: {message}"
            await asyncio.sleep(_POLL_S)
        self.session.busy = ""
        try:
            finished(job, finish)
        except Exception as error:  # noqa: BLE001 -- shown in the status line; the page stays usable
            self._report(error)
            return
        with self.state:
            self.state.progress = 100
        self._sync()

    # ---------------------------------------------------------------- the status endpoint (tests)

    def _add_status_route(self, wslink_server: Any) -> None:
        from aiohttp import web

        async def status(request: Any) -> Any:
            if self.token and request.query.get("secret") != self.token:
                return web.json_response({"error": "wrong or missing secret"}, status=403)
            snapshot = {**self.session.status(), "tool": self.state.tool,
                        "active_segment": self.editor.active_segment_id}
            return web.json_response(json.loads(json.dumps(snapshot, default=str)))

        wslink_server.app.router.add_route("GET", STATUS_PATH, status)

    # ---------------------------------------------------------------- the page

    def _build_ui(self) -> None:
        from trame.ui.vuetify3 import SinglePageWithDrawerLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v

        with SinglePageWithDrawerLayout(self.server, full_height=True) as layout:
            layout.title.set_text("LRP Segmentation review")
            layout.root.theme = "dark"
            with layout.toolbar:
                v.VSpacer()
                v.VBtn("Segment", id="btn-segment", click=self.segment, disabled=("!!busy",), classes="mx-1")
                with v.VBtnToggle(v_model=("tool",), mandatory=True, density="compact", classes="mx-1"):
                    v.VBtn("Paint", id="btn-paint", value="paint", click=lambda: self.set_tool("paint"),
                           disabled=("!segmented",))
                    v.VBtn("Erase", id="btn-erase", value="erase", click=lambda: self.set_tool("erase"),
                           disabled=("!segmented",))
                    v.VBtn("Navigate", id="btn-navigate", value="none", click=lambda: self.set_tool("none"))
                v.VBtn("Predicted", id="btn-predicted", click=lambda: self.shortcut("predicted"),
                       disabled=("!segmented || !!busy",), classes="mx-1", variant="outlined")
                v.VBtn("This lesion", id="btn-lesion", click=lambda: self.shortcut("lesion"),
                       disabled=("!segmented || !!busy",), classes="mx-1", variant="outlined")
                v.VBtn("TP / FN / FP", id="btn-errors", click=lambda: self.shortcut("errors"),
                       disabled=("!segmented || !has_reference || !!busy",), classes="mx-1", variant="outlined")
                v.VBtn("Explain", id="btn-explain", click=self.explain, disabled=("!segmented || !!busy",),
                       color="primary", classes="mx-1")
                v.VBtn("Export", id="btn-export", click=self.export, disabled=("!explained || !!busy",), classes="mx-1")
            with layout.drawer as drawer:
                drawer.width = 380
                with html.Div(classes="pa-3"):
                    html.Div("{{ message }}", id="status-message", classes="text-body-2 mb-2")
                    v.VProgressLinear(v_model=("progress",), v_show=("!!busy",), color="primary", classes="mb-2")
                    v.VSelect(label="Region A (segment painted / erased)", id="sel-region",
                              v_model=("region_id",), items=("region_items",), density="compact", hide_details=True,
                              classes="mb-3")
                    v.VSlider(label="Brush (mm)", v_model=("brush_mm",), min=2, max=40, step=1, hide_details=True,
                              density="compact", thumb_label=True, classes="mb-2")
                    v.VSelect(label="Relevance map", id="sel-sequence", v_model=("shown_sequence",),
                              items=("sequence_items",), density="compact", hide_details=True,
                              disabled=("!explained",), classes="mb-2")
                    v.VSlider(label="Opacity", v_model=("opacity",), min=0, max=1, step=0.05, hide_details=True,
                              density="compact", disabled=("!explained",), classes="mb-2")
                    v.VCheckbox(label="Cross-check (each sequence replaced by its mean: C + 1 passes)",
                                v_model=("cross_check",), density="compact", hide_details=True, id="chk-cross-check")
                    v.VCheckbox(label="Decision shares (Shapley: 2^C passes)", v_model=("decision_shares",),
                                density="compact", hide_details=True, id="chk-decision-shares", classes="mb-2")
                    with html.Div(v_if=("legend.colors",), id="legend", classes="mb-3"):
                        html.Div("Relevance ({{ legend.table }})", classes="text-caption")
                        html.Div(style=("`height: 14px; border: 1px solid #888; background: linear-gradient(to right, "
                                        "${legend.colors.join(',')})`",))
                        with html.Div(classes="d-flex text-caption"):
                            html.Span("{{ legend.low.toPrecision(2) }}")
                            v.VSpacer()
                            html.Span("0")
                            v.VSpacer()
                            html.Span("{{ legend.high.toPrecision(2) }}")
                    html.Div("Shares ({{ shares_source }})", v_if=("table_rows.length",), classes="text-caption")
                    with html.Table(id="shares-table", v_if=("table_rows.length",), classes="text-body-2",
                                    style="width: 100%; border-collapse: collapse;"):
                        with html.Tr():
                            html.Th("{{ header }}", v_for="header in table_headers", key="header",
                                    style="text-align: left; border-bottom: 1px solid #888;")
                        with html.Tr(v_for="row in table_rows", key="row[0]"):
                            html.Td("{{ cell }}", v_for="(cell, index) in row", key="index",
                                    **{"data-col": ("index",)})
                    html.Div("Exported to {{ last_export }}", v_if=("last_export",), id="export-path",
                             classes="text-caption mt-3")
            with layout.content:
                self.layout_manager.initialize_layout_grid(layout)
        self.ui = layout


def _review_layout() -> Any:
    """The axial view large, the coronal and sagittal views beside it (no 3D view: software rendering)."""
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    return Layout(LayoutDirection.Horizontal,
                  [ViewLayoutDefinition.axial_view(),
                   Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.coronal_view(),
                                                     ViewLayoutDefinition.sagittal_view()])])
