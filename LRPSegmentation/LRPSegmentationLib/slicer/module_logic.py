"""The LRPSegmentation module's Logic without Qt: `ModuleLogic`, the base of ``LRPSegmentationLogic``.

Everything the module's Logic does on the scene lives here, so scripts can use it without the
widget and the pytest suite tests it on slicer-core. ``LRPSegmentationLogic`` (in
``LRPSegmentation.py``) adds what needs the desktop application: the parameter node, installing
torch and Python packages (dialogs), and the computation process's jobs.

Importing this module is cheap (standard library only): the Slicer module imports it at
Slicer's start-up. The wing's modules (numpy, vtk, MRML) load when a `ModuleLogic` is created.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["ModuleLogic"]

#: The Slicer module's Resources/ folder (LRPSegmentation/Resources; the same layout when installed).
RESOURCES = Path(__file__).resolve().parents[2] / "Resources"
#: The sample case's thumbnail in the Sample Data module, under `RESOURCES`.
SAMPLE_THUMBNAIL = "Icons/LRPLiverPhantom.png"


class ModuleLogic:
    """The module's operations on ``slicer.mrmlScene``, camelCase like Slicer's Logic classes.

    Attributes:
        lastOutputs: the last explanation published (`publish.ExplainOutputs`), or None;
            `currentExplanation` falls back to the scene when its nodes are gone.
        Cancelled / EmptyRegionError: the exceptions callers catch.
    """

    def __init__(self) -> None:
        from . import jobs, logic, module_state, publish, sample_data, shortcuts

        self.lastOutputs = None
        self._logic, self._publish, self._shortcuts, self._jobs = logic, publish, shortcuts, jobs
        self._state, self._sampleData = module_state, sample_data
        self.Cancelled = jobs.Cancelled
        self.EmptyRegionError = shortcuts.EmptyRegionError

    @property
    def scene(self) -> Any:
        import slicer

        return slicer.mrmlScene

    # ---------------------------------------------------------------- torch (never imported here)

    def torchStatus(self) -> str:
        """One line about the installed torch, from its metadata only (no import, no CUDA)."""
        version = self._state.installed_torch_version()
        return (self._state.torch_version_problem(version)
                or f"PyTorch {version} installed. Press Refresh devices to list the GPUs.")

    def probeTorch(self) -> Any:
        """`module_state.TorchInfo` from a short separate process (torch and CUDA stay out of Slicer's)."""
        from .worker_client import default_python

        return self._state.probe_torch(default_python())

    def torchInfo(self) -> dict:
        """{"text", "cuda_devices"} of `probeTorch`."""
        info = self.probeTorch()
        return {"text": info.text, "cuda_devices": info.device_choices[1:-1]}

    # ---------------------------------------------------------------- model packages

    @staticmethod
    def resourcesFolder() -> str:
        return str(RESOURCES)

    def resolveModelPath(self, stored) -> Path | None:
        """The package folder a parameter-node model path means now (None: no model)."""
        return self._state.resolve_model_path(stored, RESOURCES)

    def storableModelPath(self, path) -> Path:
        """What the parameter node stores for a chosen folder (relative for a bundled package)."""
        return self._state.storable_model_path(path, RESOURCES)

    def defaultModelPath(self) -> str:
        """The bundled demo package's folder (else the first bundled package), or ""."""
        folder = self.resolveModelPath(self._state.default_model_path(RESOURCES))
        return str(folder) if folder is not None else ""

    def readPackageInfo(self, path) -> Any:
        """Sequences and classes of the model (no torch needed): a .lrpmodel's model.json, an nnU-Net
        v2 folder's plans.json and dataset.json, a MONAI bundle's configs (`models.formats`)."""
        return self._logic.read_package_info(path)

    def describePackage(self, package) -> str:
        return self._state.describe_package(package)

    def findVolumeByName(self, name) -> Any:
        return self._logic.find_volume_by_name(self.scene, name) if name else None

    def findReferenceVolume(self, package) -> Any:
        """The volume named like the package's reference sequence, or None."""
        return self.findVolumeByName(getattr(package, "reference_sequence", None) if package is not None else None)

    def missingInputs(self, inputNodes, referenceNode, sequenceNames) -> list[str]:
        return self._logic.check_inputs(inputNodes, referenceNode, sequenceNames)

    # ---------------------------------------------------------------- sample data

    @staticmethod
    def sampleDataFolder() -> str:
        """Slicer's download cache (where Sample Data looks for its files), else a temporary folder."""
        import slicer

        cache = slicer.mrmlScene.GetCacheManager()
        return (cache.GetRemoteCacheDirectory() if cache is not None else "") or tempfile.gettempdir()

    @classmethod
    def sampleDataSource(cls) -> dict[str, Any]:
        """The keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` for the
        phantom case, but the ``customDownloader``. The URIs are the cache files themselves, so Sample
        Data never downloads: the files exist once `loadSampleData` has generated them."""
        from . import sample_data

        files = sample_data.sample_files(cls.sampleDataFolder())
        return dict(category=sample_data.CATEGORY, sampleName=sample_data.SAMPLE_NAME,
                    thumbnailFileName=str(RESOURCES / SAMPLE_THUMBNAIL), uris=[path.as_uri() for path in files],
                    fileNames=[path.name for path in files], nodeNames=sample_data.node_names(),
                    loadFileType=sample_data.load_file_types())

    def loadSampleData(self, folder: str | os.PathLike | None = None) -> list[Any]:
        """Generate the phantom case into ``folder`` (default: the cache) unless it is there, load it;
        the nodes (`sample_data.node_names` order)."""
        import slicer

        folder = folder or self.sampleDataFolder()
        self._sampleData.write_sample_case(folder)
        nodes = self._sampleData.load_sample_case(self.scene, folder)
        shown = next(node for node in nodes if node.GetName() == self._sampleData.REFERENCE_NODE_NAME)
        # Fitting the views needs the desktop application's layout manager.
        slicer.util.setSliceViewerLayers(background=shown, fit=getattr(slicer, "app", None) is not None)
        return nodes

    # ---------------------------------------------------------------- synchronous (scripts, tests)

    def segment(self, inputNodes, referenceNode, package, device="auto", model=None) -> Any:
        return self._logic.segment(self.scene, inputNodes, referenceNode, package, device, model=model)

    def explain(self, inputNodes, referenceNode, segmentationNode, segmentId, package, targetClass=1,
                classVsRest=False, composite=None, device="auto", model=None, progress=None, cancel=None,
                crossCheck=False) -> Any:
        from ..engine import Target

        self.lastOutputs = self._logic.explain(self.scene, inputNodes, referenceNode, segmentationNode, segmentId,
                                               package, Target(int(targetClass), bool(classVsRest)), composite,
                                               device, progress=progress, cancel=cancel, model=model,
                                               cross_check=crossCheck)
        return self.lastOutputs

    # ---------------------------------------------------------------- region A

    def crosshairRAS(self) -> Any:
        """The crosshair position (world RAS), where "This lesion" looks."""
        return self._shortcuts.crosshair_ras(self.scene)

    def regionSegmentation(self, segmentationNode, referenceNode) -> Any:
        """The segmentation for region A: the given one, or a new "LRP regions" on the reference grid."""
        return self._shortcuts.ensure_region_segmentation(self.scene, segmentationNode, referenceNode)

    def removeNodes(self, nodes) -> None:
        """Remove nodes with their display and storage nodes."""
        from . import mrml

        mrml.remove_nodes(self.scene, nodes)

    def createRegionSegment(self, regionSegmentationNode, referenceNode, mode, predictedSegmentationNode,
                            predictedSegmentId, truthSegmentationNode=None, truthSegmentId=None, rasPoint=None) -> str:
        """Region A shortcut ("predicted", "lesion", "tp", "fn", "fp"); returns the segment ID."""
        return self._shortcuts.create_region_segment(self.scene, regionSegmentationNode, referenceNode, mode,
                                                     predictedSegmentationNode, predictedSegmentId,
                                                     truthSegmentationNode, truthSegmentId, rasPoint)

    def createErrorSegments(self, regionSegmentationNode, referenceNode, predictedSegmentationNode,
                            predictedSegmentId, truthSegmentationNode, truthSegmentId) -> Any:
        """TP, FN and FP segments (empty ones reported in the result, not created)."""
        return self._shortcuts.create_error_segments(self.scene, regionSegmentationNode, referenceNode,
                                                     predictedSegmentationNode, predictedSegmentId,
                                                     truthSegmentationNode, truthSegmentId)

    def regionShortcut(self, mode, regionSegmentationNode, referenceNode, predictedSegmentationNode,
                       predictedSegmentId, truthSegmentationNode=None, truthSegmentId=None) -> tuple[str, str]:
        """A shortcut button: "predicted", "lesion" (at the crosshair) or "errors" (TP, FN and FP).

        Returns:
            (the segment ID written, or "" when the region is empty; the message for the status line).
        """
        if mode == "errors":
            result = self.createErrorSegments(regionSegmentationNode, referenceNode, predictedSegmentationNode,
                                              predictedSegmentId, truthSegmentationNode, truthSegmentId)
            return result.segment_id, result.message
        ras = self.crosshairRAS() if mode == "lesion" else None  # Shift + mouse move places the crosshair
        try:
            segmentId = self.createRegionSegment(regionSegmentationNode, referenceNode, mode,
                                                 predictedSegmentationNode, predictedSegmentId, truthSegmentationNode,
                                                 truthSegmentId, ras)
        except self.EmptyRegionError as error:  # e.g. "no predicted lesion at this point": a message, no dialog
            return "", str(error)
        return segmentId, f"Region A: '{regionSegmentationNode.GetSegmentation().GetSegment(segmentId).GetName()}'."

    # ---------------------------------------------------------------- results in the scene

    def currentExplanation(self) -> Any:
        """The last explanation while its nodes are in the scene, else the newest one the scene holds
        (e.g. after loading a saved scene), or None."""
        self.lastOutputs = self._state.current_explanation(self.scene, self.lastOutputs)
        return self.lastOutputs

    def findExplanation(self) -> Any:
        return self.currentExplanation()

    def updateRegion(self, segmentationNode, segmentId, referenceNode, outputs=None) -> tuple[Any, int, int]:
        """Recompute the shares of a repainted region A (no LRP pass): of ``outputs``, else of the
        current explanation (`currentExplanation`)."""
        outputs = outputs or self.currentExplanation()
        if outputs is None:
            raise ValueError("Run Explain first.")
        return self._logic.update_region(self.scene, outputs, None, segmentationNode, segmentId, referenceNode)

    def replacedOutputs(self, outputs, keep=()) -> list[Any]:
        """The earlier outputs that ``outputs`` (a new segmentation node or explanation) supersedes."""
        return self._publish.replaced_outputs(self.scene, outputs, keep)

    def removeOutputs(self, outputs) -> None:
        self._publish.remove_outputs(self.scene, outputs)

    def displayOrder(self, outputs) -> list[int]:
        return self._state.display_order(outputs)

    @staticmethod
    def showRelevance(relevanceNode, referenceNode, opacity) -> None:
        """Show one relevance map over the reference in every slice view."""
        import slicer

        slicer.util.setSliceViewerLayers(background=referenceNode or "keep-current", foreground=relevanceNode,
                                         foregroundOpacity=float(opacity))

    @staticmethod
    def setOverlayOpacity(opacity) -> None:
        import slicer

        slicer.util.setSliceViewerLayers(foregroundOpacity=float(opacity))

    # ---------------------------------------------------------------- jobs

    def jobProgress(self, job) -> tuple[int, str]:
        """(percent, message) for the progress bar and status line."""
        return self._state.job_progress(job)

    def publishRefusal(self, job, inputNodes) -> str:
        """Why a finished job's results must not be published ("" = publish them)."""
        return self._state.publish_refusal(job, self.scene, inputNodes)

    # ---------------------------------------------------------------- asynchronous (the widget)

    def worker(self):
        """The client of the computation process (one per Logic; the process starts on the first
        request and stays alive between them, see ``LRPSegmentationLib.slicer.worker``)."""
        if getattr(self, "_worker", None) is None:
            from .worker_client import WorkerClient

            self._worker = WorkerClient()
        return self._worker

    def shutdownWorker(self) -> None:
        """Stop the computation process (module cleanup); a later request starts a new one."""
        if getattr(self, "_worker", None) is not None:
            self._worker.shutdown()

    def modelPath(self, package) -> str:
        """The package's folder: the ``path`` of its description (the module's ``loadPackage``)."""
        path = getattr(package, "path", None)
        if not path:
            raise ValueError("The model has no folder: select a .lrpmodel folder, an nnU-Net v2 trained-model "
                             "folder or a MONAI bundle folder.")
        return str(path)

    def segmentAsync(self, inputNodes, referenceNode, package, device="auto"):
        """(job, finish): MRML read now; the network runs in the computation process (``job``);
        ``finish(job)`` on the main thread creates the segmentation."""
        logic, publish = self._logic, self._publish
        inputs = logic.prepare_inputs(inputNodes, referenceNode, package)  # main thread: MRML

        def finish(job):
            return publish.publish_segmentation(self.scene, job.result(), referenceNode, package)

        return self.worker().segment(inputs, self.modelPath(package), device), finish

    def explainAsync(self, inputNodes, referenceNode, segmentationNode, segmentId, package, targetClass=1,
                     classVsRest=False, composite=None, device="auto", crossCheck=False, decisionShares=None):
        """(job, finish) of Explain. ``decisionShares``: also the "decision share (Shapley)" column
        (2^C more forward passes); None: with the cross-check."""
        logic, publish = self._logic, self._publish
        request = logic.prepare_explain(inputNodes, referenceNode, segmentationNode, segmentId, package,
                                        int(targetClass), composite, device, cross_check=crossCheck,
                                        contrast=bool(classVsRest))
        request.shapley = decisionShares

        def finish(job):
            self.lastOutputs = publish.publish_explanation(self.scene, job.result(), referenceNode,
                                                           cancel=job.cancelled)
            try:
                import slicer

                slicer.modules.plots.logic().ShowChartInLayout(self.lastOutputs.chart_node)
            except Exception:  # no plot view available (e.g. headless): the chart is still in the scene
                logging.debug("could not show the chart", exc_info=True)
            return self.lastOutputs

        return self.worker().explain(request, self.modelPath(package)), finish
