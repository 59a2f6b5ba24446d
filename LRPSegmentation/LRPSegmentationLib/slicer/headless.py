"""Start a headless, Qt-free "Slicer application" on top of slicer-core (tests, scene export).

The desktop 3D Slicer application (``qSlicerCoreApplication`` plus each module's
``setup()``) does a few things at start-up that plain ``import slicer`` from the
``slicer-core`` wheel does not:

1. creates the MRML scene and a ``vtkSlicerApplicationLogic`` that observes it;
2. creates one logic per loadable module, connects it to the application logic
   and the scene, and registers it under the module name;
3. makes the scene and logics reachable as ``slicer.mrmlScene`` and
   ``slicer.modules.<name>.logic()`` -- which ``slicer.util`` relies on
   (e.g. ``addVolumeFromArray``, ``arrayFromSegmentBinaryLabelmap``);
4. creates the default slice views (Red, Yellow, Green) of the layout;
5. (Qt side, in the subject hierarchy plugin logic) gives every new, visible
   data node a subject-hierarchy item under the scene, and removes the item when
   its data node is removed.

It does NOT reproduce any automatic removal of display/storage nodes together
with their data node: code under test must remove those itself (so it works
with or without the desktop application).

``start_slicer()`` does those steps once per process; ``clear_scene()`` is
Slicer's "Close scene". slicer-core ships no ``share/`` directory (colour files,
terminologies), so the Terminologies module is not started and the colour logic
is the base ``vtkMRMLColorLogic`` (built-in colour tables only, like trame-slicer).
``slicer.app`` (the Qt application) does not exist here; ``slicer.util``
functions that need it (layouts, dialogs) are unavailable.

It never replaces what is already there: inside the desktop application ``start_slicer()`` refuses
(use ``slicer.mrmlScene``), and an existing ``slicer.modules`` namespace only gains missing names.

Usage (``Testing/conftest.py`` has the pytest fixture; ``scene.py`` writes .mrml scenes with it)::

    from LRPSegmentationLib.slicer.headless import start_slicer, clear_scene
    scene = start_slicer()  # idempotent
    clear_scene()           # before each test
"""
from __future__ import annotations

import atexit
import tempfile
import types

import slicer
import vtk

# Module logics the LRPSegmentation module uses: (name in Slicer, logic class).
# ``slicer.modules.<name.lower()>.logic()`` returns the instance, as in Slicer.
_MODULE_LOGIC_CLASSES = (
    ("Volumes", slicer.vtkSlicerVolumesLogic),
    ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
    ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
    ("Tables", slicer.vtkSlicerTablesLogic),
    ("Plots", slicer.vtkSlicerPlotsLogic),
)

# Slice views of Slicer's default "Four-Up"/"Conventional" layouts.
_SLICE_VIEW_NAMES = ("Red", "Yellow", "Green")

# Data node classes the desktop app's subject-hierarchy plugins take ownership of
# (the subset relevant here). Hidden nodes (HideFromEditors) never get an item.
_SUBJECT_HIERARCHY_DATA_CLASSES = (
    "vtkMRMLVolumeNode",
    "vtkMRMLSegmentationNode",
    "vtkMRMLTableNode",
    "vtkMRMLPlotChartNode",
    "vtkMRMLPlotSeriesNode",
    "vtkMRMLColorTableNode",
)


class HeadlessModule:
    """Stand-in for a ``qSlicerAbstractModule``: just the name and ``logic()``."""

    def __init__(self, name: str, logic: vtk.vtkObject) -> None:
        self.name = name
        self._logic = logic

    def logic(self) -> vtk.vtkObject:
        """The module's logic (a ``vtkMRMLAbstractLogic`` subclass)."""
        return self._logic

    def __repr__(self) -> str:
        return f"HeadlessModule({self.name!r}, {self._logic.GetClassName()})"


class _SlicerSession:
    """Everything created at start-up; kept alive for the whole process."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.application_logic = slicer.vtkSlicerApplicationLogic()
        # Some logics write temporary files (e.g. when saving); give them a place.
        self.application_logic.SetTemporaryPath(tempfile.gettempdir())
        self.application_logic.SetMRMLScene(self.scene)

        # Colors: the application logic already owns a vtkMRMLColorLogic; giving it
        # the scene adds the built-in colour tables (Grey, Labels, ...).
        color_logic = self.application_logic.GetColorLogic()
        color_logic.SetMRMLApplicationLogic(self.application_logic)
        color_logic.SetMRMLScene(self.scene)
        self.application_logic.SetModuleLogic("Colors", color_logic)
        self.modules: dict[str, HeadlessModule] = {"colors": HeadlessModule("Colors", color_logic)}

        for name, logic_class in _MODULE_LOGIC_CLASSES:
            logic = logic_class()
            logic.SetMRMLApplicationLogic(self.application_logic)
            logic.SetMRMLScene(self.scene)
            self.application_logic.SetModuleLogic(name, logic)
            self.modules[name.lower()] = HeadlessModule(name, logic)

        self._create_slice_views()
        self.scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, self._add_data_node_to_subject_hierarchy)
        self.scene.AddObserver(
            slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, self._remove_subject_hierarchy_item_of_data_node
        )

    def shut_down(self) -> None:
        """Close the scene completely and detach the slice logics before anything is destroyed.

        Without this, interpreter exit destroys the logics in garbage-collection order: the colour
        logic's destructor removes its default colour nodes from a scene whose slice logics are
        already freed but still observed, and the process dies with a segmentation fault after
        all work is done (exit status 139).
        """
        self.scene.RemoveAllObservers()
        self.scene.Clear(True)  # singletons too: nothing left for a destructor to remove
        for index in reversed(range(self.slice_logics.GetNumberOfItems())):
            self.slice_logics.GetItemAsObject(index).SetMRMLScene(None)
        self.application_logic.SetSliceLogics(vtk.vtkCollection())

    def _create_slice_views(self) -> None:
        """Slice nodes + slice composite nodes, as the layout manager creates them."""
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)
        self.slice_logics = vtk.vtkCollection()
        for view_name in _SLICE_VIEW_NAMES:
            slice_logic = slicer.vtkMRMLSliceLogic()
            slice_logic.SetMRMLApplicationLogic(self.application_logic)
            slice_logic.SetMRMLScene(self.scene)
            slice_logic.AddSliceNode(view_name)
            self.slice_logics.AddItem(slice_logic)
        self.application_logic.SetSliceLogics(self.slice_logics)
        self.application_logic.SetViewLogics(vtk.vtkCollection())

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _add_data_node_to_subject_hierarchy(self, scene, event, node) -> None:
        """What Slicer's Qt subject-hierarchy plugin logic does on NodeAddedEvent."""
        if node is None or node.GetHideFromEditors() or scene.IsImporting() or scene.IsBatchProcessing():
            return
        if not any(node.IsA(class_name) for class_name in _SUBJECT_HIERARCHY_DATA_CLASSES):
            return
        subject_hierarchy = scene.GetSubjectHierarchyNode()
        if subject_hierarchy.GetItemByDataNode(node) == 0:
            subject_hierarchy.CreateItem(subject_hierarchy.GetSceneItemID(), node)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _remove_subject_hierarchy_item_of_data_node(self, scene, event, node) -> None:
        """What the same plugin logic does on NodeAboutToBeRemovedEvent.

        Without it the item would stay, pointing at the removed node.
        """
        if node is None or node.IsA("vtkMRMLSubjectHierarchyNode"):
            return
        subject_hierarchy = scene.GetSubjectHierarchyNode()
        item_id = subject_hierarchy.GetItemByDataNode(node) if subject_hierarchy else 0
        if item_id:
            subject_hierarchy.RemoveItem(item_id, False, False)  # keep data node (it is being removed), no children


_session: _SlicerSession | None = None


def start_slicer() -> slicer.vtkMRMLScene:
    """Start the headless application once per process and return its scene.

    Idempotent: later calls return the same scene. Afterwards ``slicer.mrmlScene``
    is that scene and ``slicer.modules.<name>.logic()`` works for colors, volumes,
    segmentations, subjecthierarchy, tables and plots.
    """
    global _session
    if _session is None:
        if getattr(slicer, "app", None) is not None:
            raise RuntimeError("this is the 3D Slicer application: use its scene (slicer.mrmlScene); the headless "
                               "application is for plain Python with slicer-core")
        _session = _SlicerSession()
        slicer.mrmlScene = _session.scene
        _register_modules(_session.modules)
        atexit.register(stop_slicer)
    return _session.scene


def _register_modules(modules: dict[str, HeadlessModule]) -> None:
    """Make ``slicer.modules.<name>.logic()`` work without replacing anything that is there.

    slicer-core leaves ``slicer.modules`` None: it becomes a namespace of the headless modules. An
    existing namespace (another harness, a test's stand-in) only gains the names it lacks; entries
    of an earlier, stopped headless session are replaced (their logics belong to a closed scene).
    """
    if getattr(slicer, "modules", None) is None:
        slicer.modules = types.SimpleNamespace()
    for name, module in modules.items():
        if isinstance(getattr(slicer.modules, name, None), (HeadlessModule, type(None))):
            setattr(slicer.modules, name, module)


def stop_slicer() -> None:
    """Shut the headless application down (registered to run at interpreter exit).

    Safe to call more than once; a later `start_slicer` starts a fresh one.
    """
    global _session
    if _session is not None:
        session, _session = _session, None
        session.shut_down()


def application_logic() -> slicer.vtkSlicerApplicationLogic:
    """The ``vtkSlicerApplicationLogic`` (``slicer.app.applicationLogic()`` in Slicer)."""
    start_slicer()
    assert _session is not None
    return _session.application_logic


def clear_scene() -> slicer.vtkMRMLScene:
    """Remove all non-singleton nodes, like "File > Close scene"; returns the scene.

    Singletons (colour tables, slice views, selection/interaction nodes) stay.
    """
    scene = start_slicer()
    scene.Clear(False)
    # Clear() removes the subject hierarchy node too. scene.GetSubjectHierarchyNode()
    # would hand back the removed node while Python still holds a reference to it,
    # so re-create a valid one explicitly.
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    return scene
