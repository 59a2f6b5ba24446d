"""LRP Segmentation: segment multi-sequence liver MRI with a 3D network and explain region A with LRP.

Requires 3D Slicer 5.10 or later (Python 3.12) and the PyTorch extension (PyTorchUtils), which
installs torch on the first Apply -- never at import time. All computation lives in the Qt-free
``LRPSegmentationLib`` (its Slicer wing, ``LRPSegmentationLib.slicer``); this file only wires the user
interface to it. At import it needs only ``LRPSegmentationLib.vocabulary`` (standard library).
"""
from __future__ import annotations

import importlib.util
import logging
import os

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LRPSegmentationLib.vocabulary import COMPOSITE_MENU, DEFAULT_COMPOSITE, DEMO_MODEL_RESOURCE

MINIMUM_SLICER_VERSION = (5, 10)
TORCH_REQUIREMENT = ">=2.1"
INPUT_REFERENCE_ROLE = "InputVolume_"  # + sequence name: node references of the parameter node
REGION_UPDATE_DELAY_MS = 300  # repainting region A: the shares follow after this quiet time


#
# LRPSegmentation
#


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
            "legend. Requires 3D Slicer 5.10 or later and the PyTorch extension."
        )
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = _(
            "LRP rules follow Montavon et al. (2019) and the Zennit composites (Anders et al.); "
            "the 3D U-Net follows Cicek et al. (MICCAI 2016). Built on 3D Slicer and PyTorch; module "
            "layout after Slicer's scripted module template, MONAIAuto3DSeg and TotalSegmentator."
        )


#
# Parameter node
#


@parameterNodeWrapper
class LRPSegmentationParameterNode:
    """The module's state. Input volumes, one per sequence of the loaded model, are stored as node
    references ``InputVolume_<sequence>`` of the underlying parameter node (their number depends on
    the model, so they are not fields here)."""

    modelPath: str = ""
    referenceVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    regionSegmentId: str = ""
    predictedSegmentation: vtkMRMLSegmentationNode
    predictedSegmentId: str = ""
    truthSegmentation: vtkMRMLSegmentationNode
    truthSegmentId: str = ""
    targetClass: int = 1
    classVsRest: bool = False
    composite: str = DEFAULT_COMPOSITE
    device: str = "auto"
    crossCheck: bool = True


#
# LRPSegmentationWidget
#


class LRPSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """User interface only; everything else is in LRPSegmentationLogic / LRPSegmentationLib.slicer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._package = None  # package info from model.json (no torch needed)
        self._inputSelectors = {}  # sequence name -> qMRMLNodeComboBox
        self._job = None
        self._jobFinished = None  # main-thread callback(job)
        self._timer = None
        self._updatingGui = False
        self._regionTimer = None  # single-shot: throttles share updates while region A is repainted
        self._observedRegionNode = None
        self._updatingRegion = False
        self._guessedReference = None  # reference volume picked automatically (a package's choice may replace it)

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LRPSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LRPSegmentationLogic()

        self.ui.compositeComboBox.clear()
        for name in COMPOSITE_MENU:
            self.ui.compositeComboBox.addItem(name)
        self.ui.deviceComboBox.clear()
        self.ui.deviceComboBox.addItem("auto")
        self.ui.deviceComboBox.addItem("cpu")
        self.ui.progressBar.hide()
        self.ui.statusLabel.text = ""

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

        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.referenceVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtonStates)
        self.ui.regionSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onRegionChanged)
        self.ui.regionSegmentSelector.connect("currentSegmentChanged(QString)", self.onRegionChanged)
        self.ui.predictedSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onShortcutInputsChanged)
        self.ui.predictedSegmentSelector.connect("currentSegmentChanged(QString)", self.onShortcutInputsChanged)
        self.ui.truthSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onShortcutInputsChanged)
        self.ui.truthSegmentSelector.connect("currentSegmentChanged(QString)", self.onShortcutInputsChanged)
        for button, mode in ((self.ui.predictedRegionButton, "predicted"), (self.ui.thisLesionButton, "lesion"),
                             (self.ui.errorRegionsButton, "errors")):
            button.connect("clicked(bool)", lambda checked=False, mode=mode: self.onRegionShortcut(mode))
        self.ui.targetClassComboBox.connect("currentIndexChanged(int)", self.onOptionsChanged)
        self.ui.compositeComboBox.connect("currentIndexChanged(int)", self.onOptionsChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onOptionsChanged)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.explainButton.connect("clicked(bool)", self.onExplainButton)
        self.ui.updateRegionButton.connect("clicked(bool)", self.onUpdateRegionButton)
        self.ui.openSegmentEditorButton.connect("clicked(bool)", self.onOpenSegmentEditor)
        self.ui.refreshDeviceButton.connect("clicked(bool)", self.onRefreshDevices)

        self.initializeParameterNode()
        defaultModel = self.defaultModelPath()
        if defaultModel and not self._parameterNode.modelPath:
            self._parameterNode.modelPath = defaultModel
        self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelPath
        self.onModelPathChanged(self._parameterNode.modelPath)

    def defaultModelPath(self) -> str:
        """The bundled demo package (Resources/Models/demo_unet3d.lrpmodel) if present, else the logic's pick."""
        demo = self.resourcePath(DEMO_MODEL_RESOURCE)
        return demo if os.path.exists(demo) else self.logic.defaultModelPath()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
        if self._timer is not None:
            self._timer.stop()
        if self._regionTimer is not None:
            self._regionTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.onRefreshDevices()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self._job.cancel()
        self._regionTimer.stop()
        self._observeRegionSegmentation(None)
        self.logic.lastOutputs = None  # its nodes are about to go
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        """A loaded scene (e.g. the demo's) may hold an explanation: repainting region A updates it."""
        if self.logic.lastOutputs is None:
            self.logic.lastOutputs = self.logic.findExplanation()
        self.updateButtonStates()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.referenceVolume:
            volume = self.logic.findReferenceVolume(self._package)  # the package's reference sequence, by name
            volume = volume or slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume:
                self._parameterNode.referenceVolume = volume
                self._guessedReference = volume

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # referenceVolume and classVsRest bind through the SlicerParameterName property in the .ui.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.updateGuiFromParameterNode()
            self.updateButtonStates()

    # ---------------------------------------------------------------- hand-wired widgets

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        if not self._updatingGui:
            self.updateGuiFromParameterNode()
        self.updateButtonStates()

    def updateGuiFromParameterNode(self) -> None:
        if not self._parameterNode:
            return
        self._updatingGui = True
        try:
            parameters = self._parameterNode
            for selector, node, segmentId in (
                    (self.ui.regionSegmentSelector, parameters.segmentation, parameters.regionSegmentId),
                    (self.ui.predictedSegmentSelector, parameters.predictedSegmentation,
                     parameters.predictedSegmentId),
                    (self.ui.truthSegmentSelector, parameters.truthSegmentation, parameters.truthSegmentId)):
                selector.setCurrentNode(node)
                if segmentId:
                    selector.setCurrentSegmentID(segmentId)
            self._observeRegionSegmentation(parameters.segmentation)
            self.ui.compositeComboBox.setCurrentText(parameters.composite)
            if self.ui.deviceComboBox.findText(parameters.device) >= 0:
                self.ui.deviceComboBox.setCurrentText(parameters.device)
            if 0 <= parameters.targetClass < self.ui.targetClassComboBox.count:
                self.ui.targetClassComboBox.currentIndex = parameters.targetClass
            raw = parameters.parameterNode
            for name, selector in self._inputSelectors.items():
                selector.setCurrentNode(raw.GetNodeReference(INPUT_REFERENCE_ROLE + name))
        finally:
            self._updatingGui = False

    def onOptionsChanged(self, *args) -> None:
        if self._updatingGui or not self._parameterNode:
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.targetClass = max(0, self.ui.targetClassComboBox.currentIndex)
            self._parameterNode.composite = self.ui.compositeComboBox.currentText
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
        self.updateButtonStates()
        self._scheduleRegionUpdate()  # another segment selected: its shares, if Explain ran

    def onShortcutInputsChanged(self, *args) -> None:
        if self._updatingGui or not self._parameterNode:
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.predictedSegmentation = self.ui.predictedSegmentSelector.currentNode()
            self._parameterNode.predictedSegmentId = self.ui.predictedSegmentSelector.currentSegmentID() or ""
            self._parameterNode.truthSegmentation = self.ui.truthSegmentSelector.currentNode()
            self._parameterNode.truthSegmentId = self.ui.truthSegmentSelector.currentSegmentID() or ""
        self.updateButtonStates()

    # ---------------------------------------------------------------- repainting region A

    def _observeRegionSegmentation(self, segmentationNode) -> None:
        """Watch the region segmentation: any segment change (painting, a shortcut) schedules an update."""
        if segmentationNode is self._observedRegionNode:
            return
        if self._observedRegionNode is not None:
            for event in (slicer.vtkSegmentation.SegmentModified, slicer.vtkSegmentation.RepresentationModified):
                self.removeObserver(self._observedRegionNode, event, self.onRegionSegmentationModified)
        self._observedRegionNode = segmentationNode
        if segmentationNode is not None:
            for event in (slicer.vtkSegmentation.SegmentModified, slicer.vtkSegmentation.RepresentationModified):
                self.addObserver(segmentationNode, event, self.onRegionSegmentationModified)

    def onRegionSegmentationModified(self, caller=None, event=None) -> None:
        if not self._updatingRegion:
            self._scheduleRegionUpdate()

    def _scheduleRegionUpdate(self) -> None:
        """(Re)start the single-shot timer: bursts of paint strokes give one update."""
        if self._regionTimer is not None and self.logic.lastOutputs is not None and self._job is None:
            self._regionTimer.start()

    def onRegionRepainted(self) -> None:
        """Timer: recompute the shares of the selected region A from the stored composition (no LRP)."""
        segmentation = self.ui.regionSegmentSelector.currentNode()
        segmentId = self.ui.regionSegmentSelector.currentSegmentID()
        reference = self.ui.referenceVolumeSelector.currentNode()
        if self.logic.lastOutputs is None or self._job is not None or not (segmentation and segmentId and reference):
            return
        self._updatingRegion = True
        try:
            shares = self.logic.updateRegion(segmentation, segmentId, reference)
            self.ui.statusLabel.text = _("Shares updated for region A ({n} voxels).").format(n=shares[1])
        except Exception as error:  # e.g. an empty segment while painting: say it, no dialog
            self.ui.statusLabel.text = _("Shares not updated: {error}").format(error=error)
        finally:
            self._updatingRegion = False

    def onInputVolumeChanged(self, name, node) -> None:
        if self._updatingGui or not self._parameterNode:
            return
        self._parameterNode.parameterNode.SetNodeReferenceID(INPUT_REFERENCE_ROLE + name, node.GetID() if node else None)
        self.updateButtonStates()

    def onModelPathChanged(self, path) -> None:
        """Read the model package's description and build one volume selector per sequence it expects."""
        changed = bool(self._parameterNode) and self._parameterNode.modelPath != path
        if changed:
            self._parameterNode.modelPath = path
        self._package = None
        message = ""
        if path:
            try:
                self._package = self.logic.readPackageInfo(path)
            except Exception as error:  # shown in the UI; Segment/Explain stay disabled
                message = _("Cannot load the model package: {error}").format(error=error)
        self.ui.modelInfoLabel.text = message or (self.logic.describePackage(self._package) if self._package else
                                                  _("Select a model package."))
        self._updatingGui = True  # rebuilding the combos must not overwrite the saved choices
        try:
            self._rebuildInputSelectors()
            self.ui.targetClassComboBox.clear()
            for index, className in enumerate(getattr(self._package, "class_names", None) or []):
                self.ui.targetClassComboBox.addItem(f"{index}: {className}")
        finally:
            self._updatingGui = False
        if self._package is not None and self._parameterNode:
            classes = len(self._package.class_names)
            with slicer.util.NodeModify(self._parameterNode.parameterNode):
                if changed:  # a new model: its own default composite
                    self._parameterNode.composite = self._package.composite or DEFAULT_COMPOSITE
                reference = self.logic.findReferenceVolume(self._package)
                current = self._parameterNode.referenceVolume
                if reference is not None and (changed or not current or current is self._guessedReference):
                    self._parameterNode.referenceVolume = reference
                    self._guessedReference = reference
                if not 0 <= self._parameterNode.targetClass < classes:
                    self._parameterNode.targetClass = min(1, classes - 1)
        self.updateGuiFromParameterNode()
        self._selectPredictedSegmentOfTargetClass()
        self._updateShortcutLabels()
        self.updateButtonStates()

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

    def currentInputNodes(self):
        return [selector.currentNode() for selector in self._inputSelectors.values()]

    def updateButtonStates(self, *args) -> None:
        """Disable Segment/Explain (tooltip names what is missing); Explain becomes Cancel while running."""
        if not hasattr(self, "ui"):
            return
        running = self._job is not None
        missing = []
        if self._package is None:
            missing.append(_("model package"))
        else:
            missing += self.logic.missingInputs(self.currentInputNodes(), self.ui.referenceVolumeSelector.currentNode(),
                                                list(self._package.sequences))
        segmentation = self.ui.regionSegmentSelector.currentNode()
        regionMissing = [] if segmentation and self.ui.regionSegmentSelector.currentSegmentID() else [_("region A segment")]
        canSegment = not missing and not running
        self.ui.segmentButton.enabled = canSegment
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
                                              self.logic.lastOutputs is not None)
        reference = self.ui.referenceVolumeSelector.currentNode()
        havePrediction = bool(reference and self.ui.predictedSegmentSelector.currentNode()
                              and self.ui.predictedSegmentSelector.currentSegmentID())
        haveTruth = bool(self.ui.truthSegmentSelector.currentNode()
                         and self.ui.truthSegmentSelector.currentSegmentID())
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
        predicted = self.ui.predictedSegmentSelector.currentNode()
        predictedId = self.ui.predictedSegmentSelector.currentSegmentID()
        truth = self.ui.truthSegmentSelector.currentNode()
        truthId = self.ui.truthSegmentSelector.currentSegmentID()
        if mode == "errors":
            result = self.logic.createErrorSegments(regions, reference, predicted, predictedId, truth, truthId)
            self.ui.statusLabel.text = result.message
            return result.segment_id
        ras = self.logic.crosshairRAS() if mode == "lesion" else None  # Shift + mouse move places the crosshair
        try:
            segmentId = self.logic.createRegionSegment(regions, reference, mode, predicted, predictedId, truth,
                                                       truthId, ras)
        except self.logic.EmptyRegionError as error:  # e.g. "no predicted lesion at this point": no dialog
            self.ui.statusLabel.text = str(error)
            return ""
        name = regions.GetSegmentation().GetSegment(segmentId).GetName()
        self.ui.statusLabel.text = _("Region A: '{name}'.").format(name=name)
        return segmentId

    # ---------------------------------------------------------------- devices

    def onRefreshDevices(self, *args) -> None:
        """Fill the device combo and the torch/CUDA/GPU label, only if torch is already installed."""
        info = self.logic.torchInfo()
        self.ui.deviceInfoLabel.text = info["text"]
        current = self.ui.deviceComboBox.currentText
        self._updatingGui = True
        try:
            self.ui.deviceComboBox.clear()
            for device in ["auto", *info["cuda_devices"], "cpu"]:
                self.ui.deviceComboBox.addItem(device)
            if self.ui.deviceComboBox.findText(current) >= 0:
                self.ui.deviceComboBox.setCurrentText(current)
        finally:
            self._updatingGui = False

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

    def _startJob(self, job, onFinished, message) -> None:
        self._job = job
        self._jobFinished = onFinished
        self.ui.progressBar.show()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = message
        self.updateButtonStates()
        job.start()
        self._timer.start()

    def onPollJob(self) -> None:
        """Main thread: relay progress; on completion create the nodes (MRML only here)."""
        job = self._job
        if job is None:
            self._timer.stop()
            return
        self.ui.progressBar.value = int(100 * job.fraction)
        if job.message:
            self.ui.statusLabel.text = job.message
        if not job.done:
            return
        self._timer.stop()
        self._job = None
        onFinished, self._jobFinished = self._jobFinished, None
        try:
            with slicer.util.tryWithErrorDisplay(_("LRP Segmentation failed."), waitCursor=True):
                try:
                    result = onFinished(job)
                    self.ui.statusLabel.text = getattr(result, "caution", "") or _("Done.")
                except self.logic.Cancelled:
                    self.ui.statusLabel.text = _("Cancelled; partial outputs removed.")
        finally:
            self.ui.progressBar.hide()
            self.updateButtonStates()

    def onSegmentButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            self.logic.ensureTorch()
            self.onRefreshDevices()
            package = self.logic.loadPackage(self._package.path)
            reference = self.ui.referenceVolumeSelector.currentNode()
            job, publish = self.logic.segmentAsync(self.currentInputNodes(), reference, package,
                                                   self.ui.deviceComboBox.currentText)

            def finish(job):
                node = publish(job)
                self.ui.predictedSegmentSelector.setCurrentNode(node)  # the shortcuts use the new prediction
                self._selectPredictedSegmentOfTargetClass()
                self.onShortcutInputsChanged()
                return node

            self._startJob(job, finish, _("Segmenting..."))

    def onExplainButton(self) -> None:
        if self._job is not None:  # the button is "Cancel" while running
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Explanation failed."), waitCursor=True):
            self.logic.ensureTorch()
            self.onRefreshDevices()
            package = self.logic.loadPackage(self._package.path)
            job, finish = self.logic.explainAsync(
                self.currentInputNodes(), self.ui.referenceVolumeSelector.currentNode(),
                self.ui.regionSegmentSelector.currentNode(), self.ui.regionSegmentSelector.currentSegmentID(),
                package, max(0, self.ui.targetClassComboBox.currentIndex), self.ui.classVsRestCheckBox.checked,
                self.ui.compositeComboBox.currentText, self.ui.deviceComboBox.currentText,
                crossCheck=self.ui.crossCheckCheckBox.checked)
            self._startJob(job, finish, _("Explaining region A..."))

    def onUpdateRegionButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not update the shares."), waitCursor=True):
            shares = self.logic.updateRegion(self.ui.regionSegmentSelector.currentNode(),
                                             self.ui.regionSegmentSelector.currentSegmentID(),
                                             self.ui.referenceVolumeSelector.currentNode())
            self.ui.statusLabel.text = _("Shares updated for the repainted region ({n} voxels).").format(n=shares[1])


#
# LRPSegmentationLogic
#


class LRPSegmentationLogic(ScriptedLoadableModuleLogic):
    """Thin layer over ``LRPSegmentationLib.slicer`` (usable without the widget): ``logic`` (segment,
    explain, update_region), ``publish`` (the output nodes), ``shortcuts`` (region A in one click) and
    ``jobs`` (the background thread)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.lastOutputs = None
        self._loadedPackage = None
        from LRPSegmentationLib.slicer import jobs, logic, publish, shortcuts

        self._logic, self._publish, self._shortcuts, self._jobs = logic, publish, shortcuts, jobs
        self.Cancelled = jobs.Cancelled
        self.EmptyRegionError = shortcuts.EmptyRegionError

    def getParameterNode(self):
        return LRPSegmentationParameterNode(super().getParameterNode())

    # ---------------------------------------------------------------- environment

    @staticmethod
    def checkSlicerVersion() -> None:
        version = (slicer.app.majorVersion, slicer.app.minorVersion)
        if version < MINIMUM_SLICER_VERSION:
            raise RuntimeError(_("LRP Segmentation needs 3D Slicer {minimum} or later (this is {version}).").format(
                minimum="%d.%d" % MINIMUM_SLICER_VERSION, version="%d.%d" % version))

    def ensureTorch(self):
        """Install torch through the PyTorch extension if needed (main thread, on Apply only)."""
        self.checkSlicerVersion()
        if importlib.util.find_spec("torch") is not None:
            import torch

            return torch
        try:
            import PyTorchUtils
        except ImportError as error:
            raise RuntimeError(_("This module needs the PyTorch extension: install 'PyTorch' from the "
                                 "Extensions Manager and restart Slicer.")) from error
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if not slicer.util.confirmOkCancelDisplay(
                    _("LRP Segmentation needs PyTorch. Install it now? This can take several minutes."),
                    _("PyTorch required")):
                raise RuntimeError(_("PyTorch is required; it was not installed."))
            torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                raise RuntimeError(_("PyTorch could not be installed; see the Python console."))
        import torch

        return torch

    @staticmethod
    def torchInfo() -> dict:
        """Torch version, CUDA build and GPU names, without installing anything."""
        if importlib.util.find_spec("torch") is None:
            return {"text": _("PyTorch not installed yet: it is installed on the first Segment/Explain."),
                    "cuda_devices": []}
        import torch

        if torch.cuda.is_available():
            devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            text = f"PyTorch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {names}"
        else:
            devices = []
            build = f"CUDA build {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
            text = f"PyTorch {torch.__version__} ({build}); no GPU available: computing on the CPU"
        return {"text": text, "cuda_devices": devices}

    # ---------------------------------------------------------------- model packages

    def defaultModelPath(self) -> str:
        """The demo model package shipped in Resources/Models: demo_unet3d.lrpmodel, else the first
        *.lrpmodel folder, or ""."""
        folder = os.path.join(os.path.dirname(__file__), "Resources", "Models")
        if not os.path.isdir(folder):
            return ""
        demo = os.path.join(os.path.dirname(__file__), "Resources", DEMO_MODEL_RESOURCE)
        if os.path.exists(demo):
            return demo
        entries = sorted(entry for entry in os.listdir(folder) if entry.endswith(".lrpmodel"))
        return os.path.join(folder, entries[0]) if entries else ""

    def findReferenceVolume(self, package):
        """The volume named like the package's reference sequence, or None."""
        name = getattr(package, "reference_sequence", None) if package is not None else None
        return self._logic.find_volume_by_name(slicer.mrmlScene, name) if name else None

    def readPackageInfo(self, path):
        """Sequences and classes from the package's model.json (no torch needed)."""
        return self._logic.read_package_info(path)

    def ensureDependencies(self) -> None:
        """Pure-Python packages the model packages need, installed on Apply (main thread)."""
        if importlib.util.find_spec("safetensors") is not None:
            return
        requirement = "safetensors>=0.4"
        if hasattr(slicer, "packaging") and hasattr(slicer.packaging, "pip_ensure"):  # Slicer 5.12+
            slicer.packaging.pip_ensure([requirement])
        else:
            slicer.util.pip_install(requirement)

    def loadPackage(self, path):
        """The full model package (weights included); call after ensureTorch(). Cached per path."""
        if self._loadedPackage is not None and self._loadedPackage[0] == path:
            return self._loadedPackage[1]
        self.ensureDependencies()
        from LRPSegmentationLib.models.package import load_package

        package = load_package(path)
        self._loadedPackage = (path, package)
        return package

    @staticmethod
    def describePackage(package) -> str:
        sequences = ", ".join(package.sequences)
        classes = ", ".join(package.class_names)
        return _("Sequences: {sequences}. Classes: {classes}.").format(sequences=sequences, classes=classes)

    def missingInputs(self, inputNodes, referenceNode, sequenceNames):
        return self._logic.check_inputs(inputNodes, referenceNode, sequenceNames)

    # ---------------------------------------------------------------- synchronous (scripts, tests)

    def segment(self, inputNodes, referenceNode, package, device="auto", model=None):
        return self._logic.segment(slicer.mrmlScene, inputNodes, referenceNode, package, device, model=model)

    def explain(self, inputNodes, referenceNode, segmentationNode, segmentId, package, targetClass=1,
                classVsRest=False, composite=None, device="auto", model=None, progress=None, cancel=None,
                crossCheck=False):
        from LRPSegmentationLib.engine import Target

        self.lastOutputs = self._logic.explain(slicer.mrmlScene, inputNodes, referenceNode, segmentationNode,
                                               segmentId, package, Target(int(targetClass), bool(classVsRest)), composite, device,
                                             progress=progress, cancel=cancel, model=model, cross_check=crossCheck)
        return self.lastOutputs

    def crosshairRAS(self):
        """The crosshair position (world RAS), where "This lesion" looks."""
        return self._shortcuts.crosshair_ras(slicer.mrmlScene)

    def regionSegmentation(self, segmentationNode, referenceNode):
        """The segmentation for region A: the given one, or a new "LRP regions" on the reference grid."""
        return self._shortcuts.ensure_region_segmentation(slicer.mrmlScene, segmentationNode, referenceNode)

    @staticmethod
    def removeNodes(nodes):
        """Remove nodes with their display and storage nodes."""
        from LRPSegmentationLib.slicer import mrml

        mrml.remove_nodes(slicer.mrmlScene, nodes)

    def createRegionSegment(self, regionSegmentationNode, referenceNode, mode, predictedSegmentationNode,
                            predictedSegmentId, truthSegmentationNode=None, truthSegmentId=None, rasPoint=None):
        """Region A shortcut ("predicted", "lesion", "tp", "fn", "fp"); returns the segment ID."""
        return self._shortcuts.create_region_segment(slicer.mrmlScene, regionSegmentationNode, referenceNode, mode,
                                                     predictedSegmentationNode, predictedSegmentId,
                                                     truthSegmentationNode, truthSegmentId, rasPoint)

    def createErrorSegments(self, regionSegmentationNode, referenceNode, predictedSegmentationNode,
                            predictedSegmentId, truthSegmentationNode, truthSegmentId):
        """TP, FN and FP segments (empty ones reported in the result, not created)."""
        return self._shortcuts.create_error_segments(slicer.mrmlScene, regionSegmentationNode, referenceNode,
                                                     predictedSegmentationNode, predictedSegmentId,
                                                     truthSegmentationNode, truthSegmentId)

    def updateRegion(self, segmentationNode, segmentId, referenceNode, outputs=None):
        """Recompute the shares of a repainted region A (no LRP pass): of ``outputs``, else of the last
        Explain, else of the explanation found in the scene (e.g. a loaded one)."""
        outputs = outputs or self.lastOutputs or self.findExplanation()
        if outputs is None:
            raise ValueError(_("Run Explain first."))
        return self._logic.update_region(slicer.mrmlScene, outputs, None, segmentationNode, segmentId, referenceNode)

    def findExplanation(self):
        """The most recent explanation in the scene (its nodes), or None."""
        return self._publish.find_explanation(slicer.mrmlScene)

    # ---------------------------------------------------------------- asynchronous (the widget)

    def segmentAsync(self, inputNodes, referenceNode, package, device="auto"):
        """(job, finish): MRML read now; the network runs in ``job``'s thread; ``finish(job)`` on the
        main thread creates the segmentation."""
        logic, publish = self._logic, self._publish
        inputs = logic.prepare_inputs(inputNodes, referenceNode, package)  # main thread: MRML

        def compute(progress, cancel):  # worker thread: torch only
            return logic.compute_labels(logic.load_model(package), inputs, package, device, cancel, progress)

        def finish(job):
            return publish.publish_segmentation(slicer.mrmlScene, job.result(), referenceNode, package)

        return self._jobs.BackgroundJob(compute), finish

    def explainAsync(self, inputNodes, referenceNode, segmentationNode, segmentId, package, targetClass=1,
                     classVsRest=False, composite=None, device="auto", crossCheck=False):
        from LRPSegmentationLib.engine import Target

        logic, publish = self._logic, self._publish
        request = logic.prepare_explain(inputNodes, referenceNode, segmentationNode, segmentId, package,
                                        Target(int(targetClass), bool(classVsRest)), composite, device,
                                        cross_check=crossCheck)

        def compute(progress, cancel):
            return logic.compute_explanation(request, package, None, progress, cancel)

        def finish(job):
            self.lastOutputs = publish.publish_explanation(slicer.mrmlScene, job.result(), referenceNode,
                                                           cancel=job.cancelled)
            try:
                slicer.modules.plots.logic().ShowChartInLayout(self.lastOutputs.chart_node)
            except Exception:  # no plot view available (e.g. headless): the chart is still in the scene
                logging.debug("could not show the chart", exc_info=True)
            return self.lastOutputs

        return self._jobs.BackgroundJob(compute), finish


#
# LRPSegmentationTest
#


class LRPSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test on generated data (no downloads): segment, explain, repaint, cancel."""

    SEQUENCES = ["T1 pre", "T1 arterial", "T1 portal", "T1 delayed", "T2", "DWI"]

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_LRPSegmentation1()

    def _package(self, model):
        """A real model package around the generated network (weights copied)."""
        from LRPSegmentationLib.models import create_package

        return create_package(model, "unet3d", {"in_channels": 6, "out_channels": 2, "base_channels": 4, "depth": 2},
                              list(self.SEQUENCES), normalization={"type": "zscore", "mask": "none"},
                              class_names=["background", "lesion"], class_colors=[(0, 0, 0), (0.9, 0.3, 0.1)],
                              composite=DEFAULT_COMPOSITE, reference_sequence=self.SEQUENCES[0],
                              target_spacing=(1.5, 1.2, 2.0), patch_size=(8, 8, 12), name="self-test")

    def test_LRPSegmentation1(self):
        if importlib.util.find_spec("torch") is None:
            self.delayDisplay("PyTorch is not installed: test skipped (install the PyTorch extension).")
            return
        import numpy as np
        import torch

        from LRPSegmentationLib.models import UNet3D

        self.delayDisplay("Starting the test")
        rng = np.random.default_rng(0)
        shape = (8, 8, 12)
        ijkToRas = np.diag([1.5, 1.2, 2.0, 1.0])
        inputs = [slicer.util.addVolumeFromArray(rng.normal(100, 20, shape).astype(np.float32), ijkToRas, name)
                  for name in self.SEQUENCES[:5]]
        otherGrid = np.diag([1.0, 1.0, 1.0, 1.0])
        otherGrid[:3, 3] = [-2.0, -2.0, -2.0]
        inputs.append(slicer.util.addVolumeFromArray(rng.normal(500, 50, (22, 14, 22)).astype(np.float32), otherGrid,
                                                     self.SEQUENCES[5]))
        reference = inputs[0]
        torch.manual_seed(0)
        model = UNet3D(6, 2, base_channels=4, depth=2).eval()
        package = self._package(model)
        logic = LRPSegmentationLogic()

        segmentation = logic.segment(inputs, reference, package, "cpu")
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 1)

        regions = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "regions")
        regions.CreateDefaultDisplayNodes()
        segmentId = regions.GetSegmentation().AddEmptySegment("A", "region A")
        with self.assertRaisesRegex(ValueError, "the segment 'region A' is empty: paint region A first"):
            logic.explain(inputs, reference, regions, segmentId, package, 1, False, None, "cpu")
        mask = np.zeros(shape, np.uint8)
        mask[3:6, 2:6, 4:9] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, regions, segmentId, reference)

        missing = list(inputs)
        missing[4] = None
        with self.assertRaisesRegex(ValueError, "'T2'"):
            logic.explain(missing, reference, regions, segmentId, package, 1, False, None, "cpu")

        nodes = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(logic.Cancelled):
            logic.explain(inputs, reference, regions, segmentId, package, 1, True, None, "cpu", cancel=lambda: True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)

        outputs = logic.explain(inputs, reference, regions, segmentId, package, 1, True, None, "cpu", model=model,
                                crossCheck=True)
        self.assertEqual(len(outputs.relevance_nodes), len(self.SEQUENCES))
        self.assertAlmostEqual(float(np.sum(outputs.shares)), 1.0, places=4)
        marginColumn = outputs.table_node.GetTable().GetColumnByName(logic._publish.MARGIN_COLUMN)
        self.assertEqual(marginColumn.GetNumberOfTuples(), len(self.SEQUENCES))
        for node in outputs.relevance_nodes:
            self.assertEqual(slicer.util.arrayFromVolume(node).shape, shape)

        mask[:] = 0
        mask[1:4, 4:8, 0:6] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, regions, segmentId, reference)
        shares, used, excluded = logic.updateRegion(regions, segmentId, reference)
        self.assertAlmostEqual(float(np.sum(shares)), 1.0, places=4)
        self.assertEqual(used + excluded, int(mask.sum()))

        # Region A shortcut: "this lesion" at a point of the painted box (used as the prediction here).
        ras = (ijkToRas @ np.array([5.0, 6.0, 2.0, 1.0]))[:3]  # voxel (k, j, i) = (2, 6, 5)
        lesionId = logic.createRegionSegment(regions, reference, "lesion", regions, segmentId, rasPoint=ras)
        self.assertEqual(regions.GetSegmentation().GetSegment(lesionId).GetName(), "A: this region A lesion")
        lesion = slicer.util.arrayFromSegmentBinaryLabelmap(regions, lesionId, reference)
        self.assertTrue(np.array_equal(lesion != 0, mask != 0))
        with self.assertRaisesRegex(logic.EmptyRegionError, "no predicted lesion at this point"):
            logic.createRegionSegment(regions, reference, "lesion", regions, segmentId, rasPoint=(0.0, 0.0, 0.0))
        shares, used, excluded = logic.updateRegion(regions, lesionId, reference)
        self.assertEqual(used + excluded, int(mask.sum()))
        self.delayDisplay("Test passed")
