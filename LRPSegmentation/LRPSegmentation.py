"""LRP Segmentation: segment multi-sequence liver MRI with a 3D network and explain region A with LRP.

Requires 3D Slicer 5.10 or later (Python 3.12) and the PyTorch extension (PyTorchUtils), which
installs torch on the first Segment/Explain -- never at import time. The network runs in a separate
computation process (``LRPSegmentationLib.slicer.worker``), never in Slicer's own process. All
other work lives in the Qt-free ``LRPSegmentationLib.slicer`` (tested on slicer-core): this file
only wires the user interface to it. At import it needs only the standard-library modules
``LRPSegmentationLib.vocabulary`` and ``LRPSegmentationLib.slicer.module_logic``.
"""
from __future__ import annotations

import pathlib
import tempfile
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LRPSegmentationLib.slicer.module_logic import ModuleLogic
from LRPSegmentationLib.vocabulary import COMPOSITE_MENU, DEFAULT_COMPOSITE, DEMO_MODEL_RESOURCE

MINIMUM_SLICER_VERSION = (5, 10)
#: The module's documentation: the README's section on the Slicer module (the extension homepage).
HELP_URL = "https://github.com/LRPSegmentation/SlicerLRPSegmentation#using-the-3d-slicer-module"
INPUT_REFERENCE_ROLE = "InputVolume_"  # + sequence name: node references of the parameter node
REGION_UPDATE_DELAY_MS = 300  # repainting region A: the shares follow after this quiet time


class LRPSegmentation(ScriptedLoadableModule):
    """Module description shown in Slicer (title, category, help)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LRP Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LRPSegmentation developers"]
        self.parent.helpText = _(
            "Segment multi-sequence liver MRI with a 3D segmentation network and explain a painted "
            "region A with layer-wise relevance propagation (LRP): one relevance map per input "
            "sequence, and each sequence's share of the relevance of region A (table and bar chart). "
            "Select a model package, one volume per sequence the model expects and the reference "
            "volume whose grid the outputs use; press Segment; paint region A with the Segment "
            "Editor, or use a shortcut (the predicted class, the lesion under the crosshair, or TP / FN / FP "
            "against a ground-truth segment); choose the target class and press Explain. Repainting region A "
            "updates the table and chart at once, without a new LRP pass; the relevance overlay has a colour "
            "legend. To try it, load the sample case (a generated liver phantom, no download). "
            "Requires 3D Slicer 5.10 or later and the PyTorch extension."
        )
        # The module is not part of Slicer's own documentation: link the README section instead.
        self.parent.helpText += _('<p>For more information see the <a href="{url}">online documentation</a>.</p>'
                                  ).format(url=HELP_URL)
        self.parent.acknowledgementText = _(
            "LRP rules follow Montavon et al. (2019) and the Zennit composites (Anders et al.); "
            "the 3D U-Net follows Cicek et al. (MICCAI 2016). Built on 3D Slicer and PyTorch; module "
            "layout after Slicer's scripted module template, MONAIAuto3DSeg and TotalSegmentator."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Offer the generated phantom case in the Sample Data module (the module template's pattern): the
    first click generates it into Slicer's cache (no download) and loads it."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        **ModuleLogic.sampleDataSource(), customDownloader=lambda source: LRPSegmentationLogic().loadSampleData())


@parameterNodeWrapper
class LRPSegmentationParameterNode:
    """The module's state, saved with the scene. ``modelPath`` is relative to the module's Resources/
    folder for a bundled package (survives extension updates), absolute otherwise. Input volumes,
    one per sequence of the model, are node references ``InputVolume_<sequence>`` of the underlying
    parameter node (their number depends on the model, so they are not fields here)."""

    modelPath: pathlib.Path = pathlib.Path(DEMO_MODEL_RESOURCE)
    referenceVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    regionSegmentId: str = ""
    predictedSegmentation: vtkMRMLSegmentationNode
    predictedSegmentId: str = ""
    truthSegmentation: vtkMRMLSegmentationNode
    truthSegmentId: str = ""
    targetClass: int = 1
    classVsRest: bool = False
    composite: Annotated[str, Choice(COMPOSITE_MENU)] = DEFAULT_COMPOSITE
    device: str = "auto"
    crossCheck: bool = True
    decisionShares: bool = True
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    replacePrevious: bool = True


class LRPSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """User interface only; the decisions are in LRPSegmentationLogic / LRPSegmentationLib.slicer."""

    #: Widgets that change what a job computes or where it publishes: locked while one runs.
    INPUT_WIDGETS = ("modelPathLineEdit", "loadSampleButton", "inputsFrame", "referenceVolumeSelector",
                     "regionSegmentSelector", "openSegmentEditorButton", "regionShortcutsGroupBox",
                     "targetClassComboBox", "classVsRestCheckBox", "compositeComboBox", "crossCheckCheckBox",
                     "decisionSharesCheckBox", "replacePreviousCheckBox", "deviceComboBox", "refreshDeviceButton")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._package = None  # package description from model.json (no torch needed)
        self._packagePath = None  # the folder self._package was read from
        self._inputSelectors = {}  # sequence name -> qMRMLNodeComboBox
        self._job = None
        self._jobFinished = None  # main-thread callback(job)
        self._jobInputs = []  # nodes that must still be in the scene when the job's results are published
        self._timer = None
        self._updatingGui = False
        self._regionTimer = None  # single-shot: throttles share updates while region A is repainted
        self._observedRegionNode = None
        self._updatingRegion = False
        self._shownExplanation = None  # the explanation whose maps the overlay combo lists
        self._appliedOpacity = None

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LRPSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LRPSegmentationLogic()
        self.ui.progressBar.hide()
        self.ui.statusLabel.text = ""
        self._fillDeviceCombo(["auto", "cpu"])

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPollJob)
        self._regionTimer = qt.QTimer()
        self._regionTimer.setSingleShot(True)
        self._regionTimer.setInterval(REGION_UPDATE_DELAY_MS)
        self._regionTimer.connect("timeout()", self.onRegionRepainted)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)

        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathEdited)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.referenceVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtonStates)
        self.ui.regionSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onRegionChanged)
        self.ui.regionSegmentSelector.connect("currentSegmentChanged(QString)", self.onRegionChanged)
        for selector in (self.ui.predictedSegmentSelector, self.ui.truthSegmentSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onShortcutInputsChanged)
            selector.connect("currentSegmentChanged(QString)", self.onShortcutInputsChanged)
        for button, mode in ((self.ui.predictedRegionButton, "predicted"), (self.ui.thisLesionButton, "lesion"),
                             (self.ui.errorRegionsButton, "errors")):
            button.connect("clicked(bool)", lambda checked=False, mode=mode: self.onRegionShortcut(mode))
        self.ui.targetClassComboBox.connect("currentIndexChanged(int)", self.onOptionsChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onOptionsChanged)
        self.ui.overlaySequenceComboBox.connect("currentIndexChanged(int)", self.onOverlaySequenceChanged)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.explainButton.connect("clicked(bool)", self.onExplainButton)
        self.ui.updateRegionButton.connect("clicked(bool)", self.onUpdateRegionButton)
        self.ui.openSegmentEditorButton.connect("clicked(bool)", self.onOpenSegmentEditor)
        self.ui.refreshDeviceButton.connect("clicked(bool)", self.onRefreshDevices)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
        for timer in (self._timer, self._regionTimer):
            if timer is not None:
                timer.stop()
        if self.logic is not None:
            self.logic.shutdownWorker()  # the computation process ends with the module
        self.removeObservers()

    def enter(self) -> None:
        """No torch import and no CUDA here: the label shows the installed version from its metadata."""
        self.initializeParameterNode()
        self.ui.deviceInfoLabel.text = self.logic.torchStatus()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self._endJob(cancel=True)  # its results must never reach the next scene
        self._regionTimer.stop()
        self._observeRegionSegmentation(None)
        self.logic.lastOutputs = None  # its nodes are about to go
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        """A loaded scene brings its parameter node (the model switches to its model) and maybe an
        explanation: repainting region A and "Update shares" work on it."""
        self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        default = self.logic.defaultModelPath()
        if default and self.logic.resolveModelPath(self._parameterNode.modelPath) is None:  # "" in older scenes
            self._parameterNode.modelPath = self.logic.storableModelPath(default)
        self._autoSelectInputs()
        self._refreshExplanationDisplay()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Bound through SlicerParameterName in the .ui: referenceVolume, classVsRest, composite,
            # crossCheck, decisionShares, overlayOpacity, replacePrevious. The rest is wired by hand below.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.updateGuiFromParameterNode()
            self.updateButtonStates()

    # ---------------------------------------------------------------- parameter node <-> hand-wired widgets

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        if not self._updatingGui:
            self.updateGuiFromParameterNode()
        self.updateButtonStates()

    def updateGuiFromParameterNode(self) -> None:
        if not self._parameterNode:
            return
        parameters = self._parameterNode
        modelFolder = self.logic.resolveModelPath(parameters.modelPath)
        if modelFolder != self._packagePath:  # e.g. a loaded scene's model, or Close Scene's default
            self._loadModelInfo(modelFolder)
        self._updatingGui = True
        try:
            for selector, node, segmentId in (
                    (self.ui.regionSegmentSelector, parameters.segmentation, parameters.regionSegmentId),
                    (self.ui.predictedSegmentSelector, parameters.predictedSegmentation,
                     parameters.predictedSegmentId),
                    (self.ui.truthSegmentSelector, parameters.truthSegmentation, parameters.truthSegmentId)):
                selector.setCurrentNode(node)
                if segmentId:
                    selector.setCurrentSegmentID(segmentId)
            self._observeRegionSegmentation(parameters.segmentation)
            if self.ui.deviceComboBox.findText(parameters.device) < 0:
                self.ui.deviceComboBox.addItem(parameters.device)  # e.g. "cuda:1" from a saved scene
            self.ui.deviceComboBox.setCurrentText(parameters.device)
            if 0 <= parameters.targetClass < self.ui.targetClassComboBox.count:
                self.ui.targetClassComboBox.currentIndex = parameters.targetClass
            raw = parameters.parameterNode
            for name, selector in self._inputSelectors.items():
                selector.setCurrentNode(raw.GetNodeReference(INPUT_REFERENCE_ROLE + name))
        finally:
            self._updatingGui = False
        opacity = parameters.overlayOpacity  # applied when the user moves the slider, not on entering
        if self._appliedOpacity is not None and opacity != self._appliedOpacity:
            self.logic.setOverlayOpacity(opacity)
        self._appliedOpacity = opacity

    def onModelPathEdited(self, path) -> None:
        """The user chose a package folder: store it (relative if bundled) and take the package's defaults."""
        if self._updatingGui or not self._parameterNode:
            return
        stored = self.logic.storableModelPath(path)
        if stored == self._parameterNode.modelPath:
            return
        self._loadModelInfo(self.logic.resolveModelPath(stored))
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.modelPath = stored
            if self._package is not None:
                composite = self._package.composite
                self._parameterNode.composite = composite if composite in COMPOSITE_MENU else DEFAULT_COMPOSITE
                reference = self.logic.findReferenceVolume(self._package)
                if reference is not None:
                    self._parameterNode.referenceVolume = reference
        self._autoSelectInputs()

    def _loadModelInfo(self, folder) -> None:
        """Read the package's model.json; one volume selector per sequence, the class menu, the info text."""
        self._package, self._packagePath, message = None, folder, ""
        if folder is not None:
            try:
                self._package = self.logic.readPackageInfo(str(folder))
            except Exception as error:  # shown in the UI; Segment/Explain stay disabled
                message = _("Cannot load the model package: {error}").format(error=error)
        self.ui.modelInfoLabel.text = message or (self.logic.describePackage(self._package) if self._package else
                                                  _("Select a model: a .lrpmodel folder, an nnU-Net v2 trained-model folder or a MONAI bundle folder."))
        self._updatingGui = True  # rebuilding the combos must not overwrite the saved choices
        try:
            self.ui.modelPathLineEdit.currentPath = str(folder) if folder is not None else ""
            self._rebuildInputSelectors()
            self.ui.targetClassComboBox.clear()
            for index, className in enumerate(getattr(self._package, "class_names", None) or []):
                self.ui.targetClassComboBox.addItem(f"{index}: {className}")
        finally:
            self._updatingGui = False
        classes = len(getattr(self._package, "class_names", None) or [])
        if classes and self._parameterNode and not 0 <= self._parameterNode.targetClass < classes:
            self._parameterNode.targetClass = min(1, classes - 1)
        self._selectPredictedSegmentOfTargetClass()
        self._updateShortcutLabels()

    def _rebuildInputSelectors(self) -> None:
        layout = self.ui.inputsFrame.layout()
        for selector in self._inputSelectors.values():
            layout.removeRow(selector)
        self._inputSelectors = {}
        for name in getattr(self._package, "sequences", None) or []:
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.selectNodeUponCreation = False
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.noneEnabled = True
            selector.showChildNodeTypes = False
            selector.setMRMLScene(slicer.mrmlScene)
            selector.setToolTip(_("Volume holding the '{name}' sequence (any grid: it is resampled to the "
                                  "reference volume).").format(name=name))
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node, name=name: self.onInputVolumeChanged(name, node))
            layout.addRow(f"{name}:", selector)
            self._inputSelectors[name] = selector

    def _autoSelectInputs(self) -> None:
        """Empty sequence selectors (and the reference) take the volume named like the sequence, if any."""
        if not self._parameterNode or self._package is None:
            return
        raw = self._parameterNode.parameterNode
        with slicer.util.NodeModify(raw):
            for name in self._package.sequences:
                if raw.GetNodeReference(INPUT_REFERENCE_ROLE + name) is None:
                    node = self.logic.findVolumeByName(name)
                    if node is not None:
                        raw.SetNodeReferenceID(INPUT_REFERENCE_ROLE + name, node.GetID())
            if not self._parameterNode.referenceVolume:
                reference = self.logic.findReferenceVolume(self._package)
                if reference is not None:
                    self._parameterNode.referenceVolume = reference

    def onInputVolumeChanged(self, name, node) -> None:
        if self._updatingGui or not self._parameterNode:
            return
        self._parameterNode.parameterNode.SetNodeReferenceID(INPUT_REFERENCE_ROLE + name, node.GetID() if node else None)

    def onOptionsChanged(self, *args) -> None:
        if self._updatingGui or not self._parameterNode:
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.targetClass = max(0, self.ui.targetClassComboBox.currentIndex)
            self._parameterNode.device = self.ui.deviceComboBox.currentText or "auto"
        self._selectPredictedSegmentOfTargetClass()
        self._updateShortcutLabels()

    def onRegionChanged(self, *args) -> None:
        if self._updatingGui or not self._parameterNode:
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):  # one Modified event for both
            self._parameterNode.segmentation = self.ui.regionSegmentSelector.currentNode()
            self._parameterNode.regionSegmentId = self.ui.regionSegmentSelector.currentSegmentID() or ""
        self._observeRegionSegmentation(self.ui.regionSegmentSelector.currentNode())
        self._scheduleRegionUpdate()  # another segment selected: its shares, if Explain ran

    def onShortcutInputsChanged(self, *args) -> None:
        if self._updatingGui or not self._parameterNode:
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.predictedSegmentation = self.ui.predictedSegmentSelector.currentNode()
            self._parameterNode.predictedSegmentId = self.ui.predictedSegmentSelector.currentSegmentID() or ""
            self._parameterNode.truthSegmentation = self.ui.truthSegmentSelector.currentNode()
            self._parameterNode.truthSegmentId = self.ui.truthSegmentSelector.currentSegmentID() or ""

    # ---------------------------------------------------------------- repainting region A

    def _observeRegionSegmentation(self, segmentationNode) -> None:
        """Watch the region segmentation: any segment change (painting, a shortcut) schedules an update."""
        if segmentationNode is self._observedRegionNode:
            return
        events = (slicer.vtkSegmentation.SegmentModified, slicer.vtkSegmentation.RepresentationModified)
        if self._observedRegionNode is not None:
            for event in events:
                self.removeObserver(self._observedRegionNode, event, self.onRegionSegmentationModified)
        self._observedRegionNode = segmentationNode
        if segmentationNode is not None:
            for event in events:
                self.addObserver(segmentationNode, event, self.onRegionSegmentationModified)

    def onRegionSegmentationModified(self, caller=None, event=None) -> None:
        if not self._updatingRegion:
            self._scheduleRegionUpdate()

    def _scheduleRegionUpdate(self) -> None:
        """(Re)start the single-shot timer: bursts of paint strokes give one update."""
        if self._regionTimer is not None and self._job is None and self.logic.currentExplanation() is not None:
            self._regionTimer.start()

    def onRegionRepainted(self) -> None:
        """Timer: recompute the shares of the selected region A from the stored composition (no LRP)."""
        segmentation = self.ui.regionSegmentSelector.currentNode()
        segmentId = self.ui.regionSegmentSelector.currentSegmentID()
        reference = self.ui.referenceVolumeSelector.currentNode()
        if self._job is not None or not (segmentation and segmentId and reference):
            return
        self._updatingRegion = True
        try:
            shares = self.logic.updateRegion(segmentation, segmentId, reference)
            self.ui.statusLabel.text = _("Shares updated for region A ({n} voxels).").format(n=shares[1])
        except Exception as error:  # e.g. an empty segment while painting: say it, no dialog
            self.ui.statusLabel.text = _("Shares not updated: {error}").format(error=error)
        finally:
            self._updatingRegion = False

    # ---------------------------------------------------------------- button states

    def currentInputNodes(self):
        return [selector.currentNode() for selector in self._inputSelectors.values()]

    def updateButtonStates(self, *args) -> None:
        """Disable Segment/Explain (tooltip names what is missing); Explain becomes Cancel while running."""
        if not hasattr(self, "ui"):
            return
        running = self._job is not None
        missing = [_("model package")] if self._package is None else self.logic.missingInputs(
            self.currentInputNodes(), self.ui.referenceVolumeSelector.currentNode(), list(self._package.sequences))
        segmentation = self.ui.regionSegmentSelector.currentNode()
        regionMissing = [] if segmentation and self.ui.regionSegmentSelector.currentSegmentID() else [_("region A segment")]
        self.ui.segmentButton.enabled = not missing and not running
        self.ui.segmentButton.toolTip = (_("Run the network on the inputs.") if not missing else
                                         _("Missing: {names}").format(names=", ".join(missing)))
        if running:
            self.ui.explainButton.text = _("Cancel")
            self.ui.explainButton.enabled = True
            self.ui.explainButton.toolTip = _("Stop the computation; partial outputs are removed.")
        else:
            self.ui.explainButton.text = _("Explain")
            allMissing = missing + regionMissing
            self.ui.explainButton.enabled = not allMissing
            self.ui.explainButton.toolTip = (_("Explain region A with LRP.") if not allMissing else
                                             _("Missing: {names}").format(names=", ".join(allMissing)))
        self.ui.updateRegionButton.enabled = (not running and not regionMissing and
                                              self.logic.currentExplanation() is not None)
        havePrediction = bool(self.ui.referenceVolumeSelector.currentNode()
                              and self.ui.predictedSegmentSelector.currentNode()
                              and self.ui.predictedSegmentSelector.currentSegmentID())
        haveTruth = bool(self.ui.truthSegmentSelector.currentNode() and self.ui.truthSegmentSelector.currentSegmentID())
        self.ui.predictedRegionButton.enabled = havePrediction and not running
        self.ui.thisLesionButton.enabled = havePrediction and not running
        self.ui.errorRegionsButton.enabled = havePrediction and haveTruth and not running

    def _targetClassName(self) -> str:
        names = getattr(self._package, "class_names", None) or []
        index = self.ui.targetClassComboBox.currentIndex
        return names[index] if 0 <= index < len(names) else ""

    def _updateShortcutLabels(self) -> None:
        className = self._targetClassName() or _("tumour")
        self.ui.predictedRegionButton.text = _("Predicted {name}").format(name=className)

    def _selectPredictedSegmentOfTargetClass(self) -> None:
        """In the predicted segmentation, select the segment named after the target class (if any)."""
        node = self.ui.predictedSegmentSelector.currentNode()
        className = self._targetClassName()
        if node is None or not className:
            return
        segmentId = node.GetSegmentation().GetSegmentIdBySegmentName(className)
        if segmentId and segmentId != self.ui.predictedSegmentSelector.currentSegmentID():
            self.ui.predictedSegmentSelector.setCurrentSegmentID(segmentId)

    # ---------------------------------------------------------------- region A shortcuts

    def onRegionShortcut(self, mode) -> None:
        """Predicted class / this lesion / TP, FN, FP: write region A into the region segmentation."""
        with slicer.util.tryWithErrorDisplay(_("Could not create region A."), waitCursor=True):
            reference = self.ui.referenceVolumeSelector.currentNode()
            selected = self.ui.regionSegmentSelector.currentNode()
            regions = self.logic.regionSegmentation(selected, reference)  # a new "LRP regions" if none selected
            segmentId = None
            try:
                segmentId = self._writeShortcut(mode, regions, reference)
            finally:
                if selected is None and not segmentId:  # nothing written: drop the segmentation made for it
                    self.logic.removeNodes([regions])
            if segmentId:
                self.ui.regionSegmentSelector.setCurrentNode(regions)
                self.ui.regionSegmentSelector.setCurrentSegmentID(segmentId)
                self.onRegionChanged()  # observers, parameter node, and the shares if Explain ran

    def _writeShortcut(self, mode, regions, reference):
        """The segment ID written, or "" (the status line says why)."""
        segmentId, self.ui.statusLabel.text = self.logic.regionShortcut(
            mode, regions, reference, self.ui.predictedSegmentSelector.currentNode(),
            self.ui.predictedSegmentSelector.currentSegmentID(), self.ui.truthSegmentSelector.currentNode(),
            self.ui.truthSegmentSelector.currentSegmentID())
        return segmentId

    # ---------------------------------------------------------------- devices, sample data, display

    def _fillDeviceCombo(self, devices) -> None:
        current = self.ui.deviceComboBox.currentText or "auto"
        self._updatingGui = True
        try:
            self.ui.deviceComboBox.clear()
            for device in devices:
                self.ui.deviceComboBox.addItem(device)
            self.ui.deviceComboBox.setCurrentText(current if current in devices else "auto")
        finally:
            self._updatingGui = False

    def onRefreshDevices(self, *args) -> None:
        """Ask a separate process for torch's version and the GPUs (CUDA never starts in Slicer's process)."""
        with slicer.util.tryWithErrorDisplay(_("Could not detect the devices."), waitCursor=True):
            info = self.logic.probeTorch()
            self.ui.deviceInfoLabel.text = info.text
            self._fillDeviceCombo(info.device_choices)
            self.onOptionsChanged()

    def onLoadSample(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not load the sample case."), waitCursor=True):
            self.logic.loadSampleData()
            self._autoSelectInputs()
            self.ui.statusLabel.text = _("Sample case loaded: press Segment.")

    def _refreshExplanationDisplay(self) -> None:
        """List the current explanation's relevance maps in the overlay combo, most relevant first."""
        outputs = self.logic.currentExplanation()
        if outputs is self._shownExplanation:
            return
        self._shownExplanation = outputs
        self._updatingGui = True
        try:
            self.ui.overlaySequenceComboBox.clear()
            for index in self.logic.displayOrder(outputs) if outputs is not None else []:
                self.ui.overlaySequenceComboBox.addItem(outputs.sequence_names[index], index)
        finally:
            self._updatingGui = False

    def onOverlaySequenceChanged(self, comboIndex) -> None:
        outputs = self._shownExplanation
        if self._updatingGui or outputs is None or comboIndex < 0 or not self._parameterNode:
            return
        node = outputs.relevance_nodes[self.ui.overlaySequenceComboBox.itemData(comboIndex)]
        self.logic.showRelevance(node, self.ui.referenceVolumeSelector.currentNode(),
                                 self._parameterNode.overlayOpacity)

    # ---------------------------------------------------------------- actions

    def onOpenSegmentEditor(self) -> None:
        segmentation = self.ui.regionSegmentSelector.currentNode()
        if segmentation is None:
            with slicer.util.tryWithErrorDisplay(_("Could not create the region segmentation."), waitCursor=True):
                segmentation = self.logic.regionSegmentation(None, self.ui.referenceVolumeSelector.currentNode())
            if segmentation is None:
                return
            segmentId = segmentation.GetSegmentation().AddEmptySegment("", "region A", [1.0, 1.0, 0.0])
            self.ui.regionSegmentSelector.setCurrentNode(segmentation)
            self.ui.regionSegmentSelector.setCurrentSegmentID(segmentId)
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.SegmentEditorWidget.editor
        editor.setSegmentationNode(segmentation)
        if self.ui.referenceVolumeSelector.currentNode():
            editor.setSourceVolumeNode(self.ui.referenceVolumeSelector.currentNode())
        if self.ui.regionSegmentSelector.currentSegmentID():
            editor.setCurrentSegmentID(self.ui.regionSegmentSelector.currentSegmentID())

    def _setInputsLocked(self, locked) -> None:
        for name in self.INPUT_WIDGETS:
            getattr(self.ui, name).enabled = not locked

    def _startJob(self, job, onFinished, message, inputs) -> None:
        self._job, self._jobFinished, self._jobInputs = job, onFinished, list(inputs)
        self.ui.progressBar.show()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = message
        self._setInputsLocked(True)
        self.updateButtonStates()
        job.start()
        self._timer.start()

    def _endJob(self, cancel=False) -> None:
        """Forget the running job (cancelling it first if asked) and unlock the inputs."""
        if self._job is not None and cancel:
            self._job.cancel()
        self._timer.stop()
        self._job, self._jobFinished, self._jobInputs = None, None, []
        self.ui.progressBar.hide()
        self._setInputsLocked(False)
        self.updateButtonStates()

    def onPollJob(self) -> None:
        """Main thread: relay the job's progress; when it is done, publish (MRML only here) unless it
        was cancelled or the scene it belongs to is gone."""
        job, onFinished, inputs = self._job, self._jobFinished, self._jobInputs
        if job is None:
            self._timer.stop()
            return
        done = job.done  # asking pumps the job's messages, so the progress read next is the latest
        self.ui.progressBar.value, message = self.logic.jobProgress(job)
        if message:
            self.ui.statusLabel.text = message
        if not done:
            return
        self._endJob()
        refusal = self.logic.publishRefusal(job, inputs)
        if refusal:
            self.ui.statusLabel.text = (_("Cancelled; partial outputs removed.") if refusal == "cancelled"
                                        else refusal)
            return
        with slicer.util.tryWithErrorDisplay(_("LRP Segmentation failed."), waitCursor=True):
            try:
                result = onFinished(job)
                self.ui.statusLabel.text = getattr(result, "caution", "") or _("Done.")
            except self.logic.Cancelled:
                self.ui.statusLabel.text = _("Cancelled; partial outputs removed.")
        self.updateButtonStates()

    def _replacePrevious(self, outputs, keep=()) -> None:
        """With "Replace previous results" on: remove what ``outputs`` supersedes (never ``keep``)."""
        if self._parameterNode and self._parameterNode.replacePrevious:
            self.logic.removeOutputs(self.logic.replacedOutputs(outputs, keep))

    def onSegmentButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            self.logic.ensureTorch()
            package = self.logic.loadPackage(self._package.path)
            inputs, reference = self.currentInputNodes(), self.ui.referenceVolumeSelector.currentNode()
            job, publish = self.logic.segmentAsync(inputs, reference, package, self.ui.deviceComboBox.currentText)

            def finish(job):
                node = publish(job)
                # Keep any segmentation the user paints region A in or uses as ground truth.
                self._replacePrevious(node, keep=[self.ui.regionSegmentSelector.currentNode(),
                                                  self.ui.truthSegmentSelector.currentNode()])
                self.ui.predictedSegmentSelector.setCurrentNode(node)  # the shortcuts use the new prediction
                self._selectPredictedSegmentOfTargetClass()
                self.onShortcutInputsChanged()
                return node

            self._startJob(job, finish, _("Segmenting..."), [*inputs, reference])

    def onExplainButton(self) -> None:
        if self._job is not None:  # the button is "Cancel" while running
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Explanation failed."), waitCursor=True):
            self.logic.ensureTorch()
            package = self.logic.loadPackage(self._package.path)
            inputs, reference = self.currentInputNodes(), self.ui.referenceVolumeSelector.currentNode()
            regions = self.ui.regionSegmentSelector.currentNode()
            job, publish = self.logic.explainAsync(
                inputs, reference, regions, self.ui.regionSegmentSelector.currentSegmentID(), package,
                max(0, self.ui.targetClassComboBox.currentIndex), self.ui.classVsRestCheckBox.checked,
                self.ui.compositeComboBox.currentText, self.ui.deviceComboBox.currentText,
                crossCheck=self.ui.crossCheckCheckBox.checked,
                decisionShares=self.ui.decisionSharesCheckBox.checked)

            def finish(job):
                outputs = publish(job)
                self._replacePrevious(outputs)
                self.logic.setOverlayOpacity(self._parameterNode.overlayOpacity)
                self._refreshExplanationDisplay()
                return outputs

            self._startJob(job, finish, _("Explaining region A..."), [*inputs, reference, regions])

    def onUpdateRegionButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not update the shares."), waitCursor=True):
            shares = self.logic.updateRegion(self.ui.regionSegmentSelector.currentNode(),
                                             self.ui.regionSegmentSelector.currentSegmentID(),
                                             self.ui.referenceVolumeSelector.currentNode())
            self.ui.statusLabel.text = _("Shares updated for the repainted region ({n} voxels).").format(n=shares[1])


class LRPSegmentationLogic(ScriptedLoadableModuleLogic, ModuleLogic):
    """The module's Logic (usable without the widget). Everything on the scene is `ModuleLogic`'s
    (``LRPSegmentationLib.slicer.module_logic``, Qt-free, tested on slicer-core); here is what needs
    the application: the parameter node, installing torch and packages, the computation process."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ModuleLogic.__init__(self)

    def getParameterNode(self):
        return LRPSegmentationParameterNode(super().getParameterNode())

    @staticmethod
    def checkSlicerVersion() -> None:
        version = (slicer.app.majorVersion, slicer.app.minorVersion)
        if version < MINIMUM_SLICER_VERSION:
            raise RuntimeError(_("LRP Segmentation needs 3D Slicer {minimum} or later (this is {version}).").format(
                minimum="%d.%d" % MINIMUM_SLICER_VERSION, version="%d.%d" % version))

    def ensureTorch(self) -> None:
        """torch installed and recent enough (main thread, on Segment/Explain only). Installs it through
        the PyTorch extension if missing and refuses an older one, as TotalSegmentator and MONAIAuto3DSeg
        do. torch runs in the computation process: it is not imported here."""
        self.checkSlicerVersion()
        version = self._state.installed_torch_version()
        if version is None:
            try:
                import PyTorchUtils
            except ImportError as error:
                raise RuntimeError(_("This module needs the PyTorch extension: install 'PyTorch' from the "
                                     "Extensions Manager and restart Slicer.")) from error
            if not slicer.util.confirmOkCancelDisplay(
                    _("LRP Segmentation needs PyTorch. Install it now? This can take several minutes."),
                    _("PyTorch required")):
                raise RuntimeError(_("PyTorch is required; it was not installed."))
            requirement = f">={self._state.MINIMUM_TORCH_VERSION}"
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                             torchVersionRequirement=requirement) is None:
                raise RuntimeError(_("PyTorch could not be installed; see the Python console."))
            version = self._state.installed_torch_version()
        problem = self._state.torch_version_problem(version)
        if problem:
            raise RuntimeError(problem)

    def ensureDependencies(self) -> None:
        """Pure-Python packages the model packages need, installed on Apply (main thread)."""
        import importlib.util

        if importlib.util.find_spec("safetensors") is not None:
            return
        requirement = "safetensors>=0.4"
        if hasattr(slicer, "packaging") and hasattr(slicer.packaging, "pip_ensure"):  # Slicer 5.12+
            slicer.packaging.pip_ensure([requirement])
        else:
            slicer.util.pip_install(requirement)

    def loadPackage(self, path):
        """The model package's description (model.json only: sequences, normalization, spacing,
        classes), after ensureTorch(): what Slicer's process needs. The computation process loads
        and checks the weights; torch is never imported here."""
        self.ensureDependencies()
        return self._logic.read_package_info(path)


class LRPSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test on generated data (no downloads): the checks of ``LRPSegmentationLib.slicer.module_checks``,
    which pytest also runs on slicer-core. Without torch everything but the network is checked."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_everythingButTheNetwork()
        self.setUp()
        self.test_LRPSegmentation1()

    def test_everythingButTheNetwork(self):
        """Sample case, the bundled model's inputs by name, results found again from the scene, shown most
        relevant first and replaced, a transformed reference: numpy and MRML only, no torch."""
        from LRPSegmentationLib.slicer.module_checks import check_without_network

        with tempfile.TemporaryDirectory() as folder:
            check_without_network(slicer.mrmlScene, LRPSegmentationLogic.resourcesFolder(), folder, self.delayDisplay)
        self.delayDisplay("Test passed (everything but the network)")

    def test_LRPSegmentation1(self):
        """Segment, explain, cancel, repaint and a shortcut with a tiny network (needs torch)."""
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            self.delayDisplay("PyTorch is not installed: the network test is skipped (install the PyTorch extension).")
            return
        from LRPSegmentationLib.slicer.module_checks import check_network

        check_network(slicer.mrmlScene, self.delayDisplay)
        self.delayDisplay("Test passed")
