"""The module's widget driven on slicer-core with fake Qt widgets: its wiring, not Qt itself.

The desktop application is not available here, so ``LRPSegmentation.py`` is imported with small
stand-ins for Qt (widgets that keep their state and emit their signals like Qt's do when set from
code), the parameter node wrapper and the scripted-module base classes. The widget is built from
the real ``.ui`` file's widget names and runs against a real MRML scene: model path, sample case,
input locking, progress, publishing or not, replacing earlier results, a scene saved and loaded.
The computation process is replaced by jobs that return prepared arrays (it has its own tests).
"""
from __future__ import annotations

import contextlib
import importlib
import pathlib
import sys
import types
import typing
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
vtk = pytest.importorskip("vtk")

from LRPSegmentationLib.slicer import compute, module_logic, publish, sample_data  # noqa: E402
from LRPSegmentationLib.vocabulary import COMPOSITE_MENU, DEMO_MODEL, DEMO_MODEL_RESOURCE  # noqa: E402

UI_FILE = module_logic.RESOURCES / "UI" / "LRPSegmentation.ui"


# ------------------------------------------------------------------------------------ fake Qt widgets


def _accepted(slot, offered: int) -> int:
    """How many signal arguments PythonQt passes: no more than the Python slot takes."""
    import inspect

    parameters = inspect.signature(slot).parameters.values()
    if any(parameter.kind == parameter.VAR_POSITIONAL for parameter in parameters):
        return offered
    return min(offered, sum(parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
                            for parameter in parameters))


class FakeWidget:
    """Keeps what the module sets; ``emit`` calls the slots ``connect`` registered."""

    def __init__(self, name=""):
        self.name, self.enabled, self.text, self.toolTip, self.visible, self.checked = name, True, "", "", True, False
        self.slots = {}

    def connect(self, signal, slot):
        self.slots.setdefault(signal, []).append(slot)

    def emit(self, signal, *args):
        for slot in list(self.slots.get(signal, [])):
            slot(*args[:_accepted(slot, len(args))])

    def show(self):
        self.visible = True

    def hide(self):
        self.visible = False

    def setToolTip(self, text):
        self.toolTip = text

    def setMRMLScene(self, scene):
        self.scene = scene


class FakeComboBox(FakeWidget):
    def __init__(self, name=""):
        super().__init__(name)
        self.items, self._index = [], -1

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        if index != self._index:
            self._index = index
            self.emit("currentIndexChanged(int)", index)

    @property
    def count(self):
        return len(self.items)

    @property
    def currentText(self):
        return self.items[self._index][0] if 0 <= self._index < len(self.items) else ""

    def addItem(self, text, data=None):
        self.items.append((text, data))
        if self._index < 0:
            self.currentIndex = 0

    def clear(self):
        self.items = []
        self.currentIndex = -1

    def findText(self, text):
        return next((index for index, item in enumerate(self.items) if item[0] == text), -1)

    def setCurrentText(self, text):
        if self.findText(text) >= 0:
            self.currentIndex = self.findText(text)

    def itemData(self, index):
        return self.items[index][1]


class FakeNodeSelector(FakeWidget):
    def __init__(self, name=""):
        super().__init__(name)
        self._node = None

    def currentNode(self):
        return self._node if self._node is None or self._node.GetScene() is not None else None

    def setCurrentNode(self, node):
        if node is not self._node:
            self._node = node
            self.emit("currentNodeChanged(vtkMRMLNode*)", node)


class FakeSegmentSelector(FakeNodeSelector):
    def __init__(self, name=""):
        super().__init__(name)
        self._segment = ""

    def currentSegmentID(self):
        return self._segment if self.currentNode() is not None else ""

    def setCurrentSegmentID(self, segment_id):
        if segment_id != self._segment:
            self._segment = segment_id
            self.emit("currentSegmentChanged(QString)", segment_id)


class FakePathLineEdit(FakeWidget):
    def __init__(self, name=""):
        super().__init__(name)
        self._path = ""

    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, path):
        if path != self._path:
            self._path = path
            self.emit("currentPathChanged(QString)", path)


class FakeFormLayout:
    def __init__(self):
        self.rows = []

    def addRow(self, label, widget):
        self.rows.append((label, widget))

    def removeRow(self, widget):
        self.rows = [row for row in self.rows if row[1] is not widget]


class FakeFrame(FakeWidget):
    def __init__(self, name=""):
        super().__init__(name)
        self._layout = FakeFormLayout()

    def layout(self):
        return self._layout


FAKES = {"QComboBox": FakeComboBox, "qMRMLNodeComboBox": FakeNodeSelector,
         "qMRMLSegmentSelectorWidget": FakeSegmentSelector, "ctkPathLineEdit": FakePathLineEdit,
         "QWidget": FakeFrame}


def ui_namespace():
    """One fake per widget of the real .ui file (the names the module must use)."""
    widgets = {widget.get("name"): FAKES.get(widget.get("class"), FakeWidget)(widget.get("name"))
               for widget in ElementTree.parse(UI_FILE).iter("widget")}
    return types.SimpleNamespace(**widgets)


# ------------------------------------------------------------------------------------ fake Slicer Python API


def parameter_node_wrapper(cls):
    """What Slicer's @parameterNodeWrapper does for these field types (serializers.py), minus the GUI."""
    hints = typing.get_type_hints(cls, include_extras=True)

    class Wrapper:
        def __init__(self, node):
            self.parameterNode = node
            for name in hints:
                if not node.HasParameter(name) and not node.GetNodeReference(name):
                    default = getattr(cls, name, None)
                    if default is not None:
                        setattr(self, name, default)

        def connectGui(self, gui):
            """Slicer's guiConnectors for the .ui's SlicerParameterName widgets: parameter -> widget on
            every Modified event, node selector -> parameter on its signal."""
            bound = {widget.get("name"): widget.findtext("property[@name='SlicerParameterName']/string")
                     for widget in ElementTree.parse(UI_FILE).iter("widget")
                     if widget.find("property[@name='SlicerParameterName']") is not None}

            def write(*args):
                for name, field in bound.items():
                    widget, value = getattr(gui, name), getattr(self, field)
                    if isinstance(widget, FakeNodeSelector):
                        widget.setCurrentNode(value)
                    elif isinstance(widget, FakeComboBox):  # the Choice connector fills the menu
                        if not widget.count:
                            for choice in COMPOSITE_MENU:
                                widget.addItem(choice)
                        widget.setCurrentText(value)
                    elif isinstance(value, bool):
                        widget.checked = value
                    else:
                        widget.value = value

            slots = []
            for name, field in bound.items():
                widget = getattr(gui, name)
                if isinstance(widget, FakeNodeSelector):
                    slot = (lambda node, field=field: setattr(self, field, node))
                    widget.connect("currentNodeChanged(vtkMRMLNode*)", slot)
                    slots.append((widget, slot))
            write()
            tag = self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, write)
            self._guis = {**getattr(self, "_guis", {}), tag: slots}
            return tag

        def disconnectGui(self, tag):
            for widget, slot in getattr(self, "_guis", {}).pop(tag, []):
                widget.slots["currentNodeChanged(vtkMRMLNode*)"].remove(slot)
            self.parameterNode.RemoveObserver(tag)

        def AddObserver(self, event, callback, priority=0.0):
            return self.parameterNode.AddObserver(event, callback, priority)

        def RemoveObserver(self, tag):
            self.parameterNode.RemoveObserver(tag)


    def field(name, kind):
        kind = typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Annotated else kind
        if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
            return property(lambda self: self.parameterNode.GetNodeReference(name),
                            lambda self, node: self.parameterNode.SetNodeReferenceID(name, node.GetID() if node else None))
        read = {bool: lambda text: text == "True", pathlib.Path: pathlib.Path}.get(kind, kind)

        def get(self):
            if not self.parameterNode.HasParameter(name):  # as Slicer's _Parameter.read: the default first
                self.parameterNode.SetParameter(name, str(getattr(cls, name)))
            return read(self.parameterNode.GetParameter(name))

        return property(get, lambda self, value: self.parameterNode.SetParameter(name, str(value)))

    for name, kind in hints.items():
        setattr(Wrapper, name, field(name, kind))
    return Wrapper


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = "LRPSegmentation"

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = types.SimpleNamespace(isEntered=True)
        self.layout = types.SimpleNamespace(addWidget=lambda widget: None)

    def setup(self):
        pass

    def resourcePath(self, name):
        return str(module_logic.RESOURCES / name)


class FakeJob:
    """A `jobs.Job` whose computation already happened: ``finish_after`` polls, then done."""

    def __init__(self, value, finish_after=2):
        self.value, self.fraction, self.message, self.polls, self.finish_after = value, 0.0, "", 0, finish_after
        self.started = self.was_cancelled = False

    def start(self):
        self.started = True
        return self

    @property
    def done(self):
        self.polls += 1
        self.fraction, self.message = min(1.0, 0.42 * self.polls), f"step {self.polls}"
        return self.polls > self.finish_after

    def cancel(self):
        self.was_cancelled = True

    def cancelled(self):
        return self.was_cancelled

    def result(self):
        return self.value


@pytest.fixture
def module(mrml_scene, monkeypatch):
    """LRPSegmentation.py imported on slicer-core with the fakes above."""
    def stub(name, **attributes):
        stubbed = types.ModuleType(name)
        stubbed.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, stubbed)
        return stubbed

    class QTimer(FakeWidget):
        def setInterval(self, milliseconds):
            pass

        def setSingleShot(self, single):
            pass

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

    errors = []

    @contextlib.contextmanager
    def try_with_error_display(message=None, show=True, waitCursor=False):
        try:
            yield
        except Exception as error:
            errors.append(error)
            raise

    stub("qt", QTimer=QTimer)
    for name, attributes in (
            ("i18n", dict(tr=lambda text: text, translate=lambda context, text: text)),
            ("parameterNodeWrapper", dict(parameterNodeWrapper=parameter_node_wrapper, Choice=lambda choices: None,
                                          WithinRange=lambda minimum, maximum: None)),
            ("ScriptedLoadableModule", dict(ScriptedLoadableModule=object, ScriptedLoadableModuleTest=object,
                                            ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
                                            ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget))):
        monkeypatch.setattr(slicer, name, stub(f"slicer.{name}", **attributes), raising=False)
    monkeypatch.setattr(slicer, "qMRMLNodeComboBox", FakeNodeSelector, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(majorVersion=5, minorVersion=10,
                                                             layoutManager=lambda: None), raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: FakeWidget("LRPSegmentation"))
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda widget: ui_namespace())
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", try_with_error_display)
    monkeypatch.syspath_prepend(str(module_logic.RESOURCES.parent))
    monkeypatch.delitem(sys.modules, "LRPSegmentation", raising=False)
    imported = importlib.import_module("LRPSegmentation")
    imported.errors = errors
    return imported


@pytest.fixture
def widget(module):
    built = module.LRPSegmentationWidget()
    built.setup()
    built.enter()
    yield built
    built.exit()  # as when the user leaves the module: the GUI is disconnected from the parameter node
    built.cleanup()


def published_segmentations():
    return [node for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
            if node.GetAttribute(publish.SEGMENTATION_ATTRIBUTE)]


def click(button):
    button.emit("clicked(bool)", False)


def run_job(widget, polls=10):
    for _ in range(polls):
        if widget._job is None:
            return
        widget.onPollJob()
    raise AssertionError("the job never finished")


def fake_segmentation(module, widget, monkeypatch, labels=None):
    """segmentAsync as the worker-process version offers it: (job, finish); the labels come ready."""
    def segment_async(inputs, reference, package, device="auto"):
        values = labels if labels is not None else (slicer.util.arrayFromVolume(reference) > 150).astype(np.uint8)
        return FakeJob(values), lambda job: publish.publish_segmentation(slicer.mrmlScene, job.result(), reference,
                                                                          package)

    monkeypatch.setattr(widget.logic, "segmentAsync", segment_async)


def fake_explanation(widget, monkeypatch, positive_shares=(0.1, 0.1, 0.5, 0.1, 0.1, 0.1)):
    def explain_async(inputs, reference, segmentation, segment_id, package, *args, **options):
        shape = slicer.util.arrayFromVolume(reference).shape
        result = compute.ExplainResult(
            relevance=np.random.default_rng(0).normal(size=(6, *shape)).astype(np.float32),
            composition=np.full((6, *shape), 1 / 6, np.float32), shares=np.full(6, 1 / 6),
            positive_shares=np.array(positive_shares), n_used=5, n_excluded=0,
            sequence_names=list(package.sequences),
            region_name=segmentation.GetSegmentation().GetSegment(segment_id).GetName())

        def finish(job):
            widget.logic.lastOutputs = publish.publish_explanation(slicer.mrmlScene, job.result(), reference)
            return widget.logic.lastOutputs

        return FakeJob(result), finish

    monkeypatch.setattr(widget.logic, "explainAsync", explain_async)


# ------------------------------------------------------------------------------------ tests


def test_the_bundled_demo_model_is_loaded_and_stored_relative(widget):
    parameters = widget._parameterNode
    assert parameters.modelPath == Path(DEMO_MODEL_RESOURCE)
    assert widget.ui.modelPathLineEdit.currentPath == str(DEMO_MODEL)
    assert "<b>demo_unet3d</b>" in widget.ui.modelInfoLabel.text and "weights " in widget.ui.modelInfoLabel.text
    assert list(widget._inputSelectors) == ["T2", "plainT1", "T1-20s", "T1-60s", "T1-120s", "T1-15min"]
    assert widget.ui.targetClassComboBox.items[1][0] == "1: tumour"
    assert widget.ui.deviceInfoLabel.text.startswith("PyTorch ")
    assert not widget.ui.segmentButton.enabled and "T2" in widget.ui.segmentButton.toolTip


def test_choosing_a_package_folder_stores_it_and_takes_its_defaults(widget, tmp_path):
    from LRPSegmentationLib.models import UNet3D, create_package

    package = create_package(UNet3D(2, 3, base_channels=2, depth=1), "unet3d",
                             {"in_channels": 2, "out_channels": 3, "base_channels": 2, "depth": 1}, ["A", "B"],
                             class_names=["background", "x", "y"], composite="epsilon", reference_sequence="B",
                             normalization={"type": "zscore", "mask": "none"}, target_spacing=(1.0, 1.0, 1.0),
                             patch_size=(8, 8, 8), name="mine")
    folder = package.save(tmp_path / "mine.lrpmodel")
    widget.ui.modelPathLineEdit.currentPath = str(folder)  # Browse / typing
    assert widget._parameterNode.modelPath == folder and widget._parameterNode.composite == "epsilon"
    assert list(widget._inputSelectors) == ["A", "B"] and widget.ui.targetClassComboBox.count == 3
    widget.ui.modelPathLineEdit.currentPath = str(tmp_path / "nothing")
    assert "Cannot load the model package" in widget.ui.modelInfoLabel.text and widget._package is None


def test_the_sample_case_fills_every_input_and_segment_publishes_after_the_job(module, widget, monkeypatch):
    click(widget.ui.loadSampleButton)
    assert all(selector.currentNode() is not None for selector in widget._inputSelectors.values())
    assert widget.ui.referenceVolumeSelector is not None and widget._parameterNode.referenceVolume.GetName() == "T1-15min"
    assert widget.ui.segmentButton.enabled
    fake_segmentation(module, widget, monkeypatch)
    click(widget.ui.segmentButton)
    assert widget._job is not None and widget.ui.explainButton.text == "Cancel"
    assert not any(getattr(widget.ui, name).enabled for name in widget.INPUT_WIDGETS)  # locked
    widget.onPollJob()
    assert widget.ui.progressBar.value == 42 and widget.ui.statusLabel.text == "step 1"
    run_job(widget)
    assert all(getattr(widget.ui, name).enabled for name in widget.INPUT_WIDGETS)  # unlocked
    segmentation = widget.ui.predictedSegmentSelector.currentNode()
    assert segmentation is not None and widget.ui.predictedSegmentSelector.currentSegmentID()
    assert widget._parameterNode.predictedSegmentation is segmentation and widget.ui.statusLabel.text == "Done."
    assert widget.ui.predictedRegionButton.enabled
    click(widget.ui.predictedRegionButton)  # region A in one click, into a new "LRP regions"
    regions = widget.ui.regionSegmentSelector.currentNode()
    assert regions.GetName() == "LRP regions" and widget._parameterNode.segmentation is regions
    assert widget.ui.statusLabel.text == "Region A: 'A: predicted tumour'." and widget.ui.explainButton.enabled
    crosshair = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLCrosshairNode")  # the desktop app has one
    crosshair.SetCrosshairRAS(500.0, 500.0, 500.0)
    click(widget.ui.thisLesionButton)  # the crosshair is nowhere near a lesion: a message, no dialog
    assert "no predicted lesion" in widget.ui.statusLabel.text and module.errors == []

    click(widget.ui.segmentButton)  # again: the earlier segmentation is replaced
    run_job(widget)
    assert [node.GetName() for node in published_segmentations()] == ["T1-15min LRP segmentation"]
    assert segmentation.GetScene() is None
    widget._parameterNode.replacePrevious = False
    click(widget.ui.segmentButton)
    run_job(widget)
    assert len(published_segmentations()) == 2


def test_a_job_cancelled_or_outlived_by_its_scene_publishes_nothing(module, widget, monkeypatch, mrml_scene):
    click(widget.ui.loadSampleButton)
    fake_segmentation(module, widget, monkeypatch)
    click(widget.ui.segmentButton)
    job = widget._job
    click(widget.ui.explainButton)  # "Cancel"
    assert job.was_cancelled and widget.ui.statusLabel.text == "Cancelling..."
    run_job(widget)
    assert widget.ui.statusLabel.text == "Cancelled; partial outputs removed."
    assert published_segmentations() == []

    click(widget.ui.segmentButton)
    job = widget._job
    mrml_scene.Clear(0)  # File > Close Scene while it runs
    assert job.was_cancelled and widget._job is None and widget.ui.modelPathLineEdit.enabled
    assert published_segmentations() == []
    assert widget._parameterNode.modelPath == Path(DEMO_MODEL_RESOURCE)  # the new scene's parameter node

    click(widget.ui.loadSampleButton)
    click(widget.ui.segmentButton)
    job = widget._job
    inputs = widget._jobInputs
    slicer.mrmlScene.RemoveNode(inputs[0])  # an input deleted before the results arrive
    run_job(widget)
    assert "no longer in the scene" in widget.ui.statusLabel.text
    assert published_segmentations() == [] and not job.was_cancelled


def test_explain_shows_the_most_relevant_map_replaces_and_survives_a_scene_reload(module, widget, monkeypatch,
                                                                                  tmp_path):
    from test_slicer_module_state import save_and_reload

    click(widget.ui.loadSampleButton)
    truth = slicer.util.getNode(sample_data.TRUTH_NODE_NAME)
    segment_id = truth.GetSegmentation().GetSegmentIdBySegmentName(sample_data.TRUTH_SEGMENT_NAME)
    widget.ui.regionSegmentSelector.setCurrentNode(truth)
    widget.ui.regionSegmentSelector.setCurrentSegmentID(segment_id)
    assert widget._parameterNode.segmentation is truth and widget.ui.explainButton.enabled
    assert not widget.ui.updateRegionButton.enabled  # nothing explained yet
    fake_explanation(widget, monkeypatch)
    click(widget.ui.explainButton)
    run_job(widget)
    first = widget.logic.currentExplanation()
    assert [item[0] for item in widget.ui.overlaySequenceComboBox.items][0] == "T1-20s"
    composite = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite.GetForegroundVolumeID() == first.relevance_nodes[2].GetID()
    widget.ui.overlaySequenceComboBox.currentIndex = 1
    assert composite.GetForegroundVolumeID() == first.relevance_nodes[0].GetID()
    widget._parameterNode.overlayOpacity = 0.8  # the slider
    assert composite.GetForegroundOpacity() == pytest.approx(0.8)
    assert widget.ui.updateRegionButton.enabled

    click(widget.ui.explainButton)  # the same region again: the earlier results go
    run_job(widget)
    assert first.composition_node.GetScene() is None
    assert len(publish.find_explanations(slicer.mrmlScene)) == 1

    scene = save_and_reload(slicer.mrmlScene, tmp_path)  # File > Save, Close Scene, load it again
    assert widget._parameterNode.parameterNode.GetScene() is scene and widget._package is not None
    assert widget._parameterNode.segmentation.GetName() == sample_data.TRUTH_NODE_NAME
    assert widget.ui.updateRegionButton.enabled  # rebuilt from the scene
    click(widget.ui.updateRegionButton)
    assert widget.ui.statusLabel.text.startswith("Shares updated") and module.errors == []
