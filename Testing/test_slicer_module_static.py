"""Static checks of the Slicer module and extension files (no Slicer, no Qt, no torch needed).

- every ``self.ui.<name>`` the module uses is a widget of the .ui file;
- LRPSegmentation.py byte-compiles and imports no torch at module level;
- the module CMakeLists lists every .py under LRPSegmentationLib (walked, so a new file that is
  not listed fails here) and every file it lists exists;
- the .ui parses as XML and its SlicerParameterName bindings name parameter-node fields;
- the top-level CMakeLists and the Extensions Index catalog entry carry the required fields.
"""
from __future__ import annotations

import ast
import json
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LRPSegmentation"
MODULE_PY = MODULE_DIR / "LRPSegmentation.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LRPSegmentation.ui"
LIB_DIR = MODULE_DIR / "LRPSegmentationLib"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
TOP_CMAKE = ROOT / "CMakeLists.txt"
CATALOG = ROOT / "LRPSegmentation.json"


def ui_widgets() -> dict[str, ElementTree.Element]:
    tree = ElementTree.parse(UI_FILE)
    return {widget.get("name"): widget for widget in tree.iter("widget")}


def module_tree() -> ast.Module:
    return ast.parse(MODULE_PY.read_text(encoding="utf-8"), filename=str(MODULE_PY))


def ui_names_used() -> set[str]:
    """Every attribute read as ``self.ui.<name>``."""
    names = set()
    for node in ast.walk(module_tree()):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            names.add(node.attr)
    return names


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(r"set\(\s*" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def cmake_set(text: str, variable: str) -> str:
    match = re.search(r"set\(\s*" + variable + r'\s+"([^"]*)"', text)
    assert match, f"{variable} is not set to a quoted value"
    return match.group(1)


# ------------------------------------------------------------------------------------ module file


def test_module_byte_compiles(tmp_path):
    py_compile.compile(str(MODULE_PY), cfile=str(tmp_path / "LRPSegmentation.pyc"), doraise=True)


def test_module_imports_no_torch_at_import_time():
    """torch comes from the PyTorch extension on Apply, never at import; of the library, the module
    imports only the vocabulary (standard library) at import time."""
    for node in module_tree().body:
        if isinstance(node, ast.Import):
            assert not any(alias.name.split(".")[0] in {"torch", "LRPSegmentationLib"} for alias in node.names)
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            assert module.split(".")[0] != "torch"
            assert module.split(".")[0] != "LRPSegmentationLib" or module == "LRPSegmentationLib.vocabulary"


def _modules_loaded_by(statement: str) -> set[str]:
    """Top-level packages in sys.modules after ``statement`` in a fresh interpreter."""
    script = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=MODULE_DIR)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_the_vocabulary_needs_only_the_standard_library():
    """The module imports it at Slicer's start-up: no numpy, no torch, no slicer."""
    tree = ast.parse((LIB_DIR / "vocabulary.py").read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 if node.level == 0}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    assert not any(isinstance(node, ast.ImportFrom) and node.level > 0 for node in ast.walk(tree))
    assert not _modules_loaded_by("import LRPSegmentationLib.vocabulary") & {"numpy", "torch", "slicer"}


def test_region_a_and_the_package_description_need_no_torch():
    """What the module's main thread uses to choose region A and read a package: numpy/SimpleITK only."""
    loaded = _modules_loaded_by("import LRPSegmentationLib.regions, LRPSegmentationLib.models.metadata")
    assert "torch" not in loaded and "numpy" in loaded


def test_module_has_the_template_classes_and_metadata():
    tree = module_tree()
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for name in ("LRPSegmentation", "LRPSegmentationParameterNode", "LRPSegmentationWidget", "LRPSegmentationLogic",
                 "LRPSegmentationTest"):
        assert name in classes
    decorators = [ast.unparse(d) for d in classes["LRPSegmentationParameterNode"].decorator_list]
    assert "parameterNodeWrapper" in decorators
    assert [ast.unparse(b) for b in classes["LRPSegmentationTest"].bases] == ["ScriptedLoadableModuleTest"]
    source = MODULE_PY.read_text(encoding="utf-8")
    for attribute in ("title", "categories", "contributors", "helpText", "acknowledgementText"):
        assert re.search(rf"self\.parent\.{attribute} = ", source), attribute
    assert '_("LRP Segmentation")' in source
    assert '"Segmentation")]' in source
    assert "MINIMUM_SLICER_VERSION = (5, 10)" in source


def test_every_ui_widget_the_module_uses_exists_in_the_ui_file():
    used = ui_names_used()
    assert used, "the module uses no self.ui widgets?"
    missing = sorted(used - set(ui_widgets()))
    assert not missing, f"LRPSegmentation.py uses widgets missing from the .ui file: {missing}"


# ------------------------------------------------------------------------------------ .ui file


def test_ui_file_parses_and_has_a_qmrmlwidget_root():
    root = ElementTree.parse(UI_FILE).getroot()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == "LRPSegmentation"
    declared = {custom.findtext("class") for custom in root.iter("customwidget")}
    used_custom = {w.get("class") for w in ui_widgets().values() if w.get("class", "").startswith(("qMRML", "ctk"))}
    assert used_custom <= declared, f"custom widgets not declared: {used_custom - declared}"


def test_ui_parameter_bindings_name_parameter_node_fields():
    tree = module_tree()
    wrapper = next(node for node in tree.body
                   if isinstance(node, ast.ClassDef) and node.name == "LRPSegmentationParameterNode")
    fields = {node.target.id for node in wrapper.body if isinstance(node, ast.AnnAssign)}
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.findtext("string")
    assert bound, "no widget is bound to the parameter node"
    assert set(bound.values()) <= fields, f"bindings to unknown parameters: {set(bound.values()) - fields}"
    assert bound.get("referenceVolumeSelector") == "referenceVolume"


# ------------------------------------------------------------------------------------ CMake


def test_module_cmakelists_lists_every_lib_python_file_and_only_existing_files():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    scripts = [entry.replace("${MODULE_NAME}", "LRPSegmentation") for entry in cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    on_disk = sorted(str(path.relative_to(MODULE_DIR)).replace("\\", "/") for path in LIB_DIR.rglob("*.py")
                     if "__pycache__" not in path.parts)
    not_listed = sorted(set(on_disk) - set(scripts))
    assert not not_listed, f"add these to MODULE_PYTHON_SCRIPTS in LRPSegmentation/CMakeLists.txt: {not_listed}"
    assert "LRPSegmentation.py" in scripts
    absent = [entry for entry in scripts if not (MODULE_DIR / entry).is_file()]
    assert not absent, f"MODULE_PYTHON_SCRIPTS lists files that do not exist: {absent}"
    assert len(scripts) == len(set(scripts)), "a script is listed twice"


def test_module_cmakelists_resources_tests_and_macro():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    resources = [entry.replace("${MODULE_NAME}", "LRPSegmentation") for entry in cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    files = [entry for entry in resources if not entry.startswith("${")]
    assert "Resources/Icons/LRPSegmentation.png" in files and "Resources/UI/LRPSegmentation.ui" in files
    assert all((MODULE_DIR / entry).is_file() for entry in files)
    assert "${MODULE_MODEL_FILES}" in resources and "Resources/Models/" in text
    assert re.search(r"slicerMacroBuildScriptedModule\(.*WITH_GENERIC_TESTS.*\)", text, re.S)
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\).*endif",
                     text, re.S)


def test_icons_are_128_pixel_pngs():
    for icon in (MODULE_DIR / "Resources" / "Icons" / "LRPSegmentation.png", ROOT / "Resources" / "Icons" /
                 "LRPSegmentation.png"):
        data = icon.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (128, 128)


def test_top_level_cmakelists_has_the_extension_metadata():
    text = TOP_CMAKE.read_text(encoding="utf-8")
    assert re.search(r"project\(LRPSegmentation\)", text)
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert cmake_set(text, variable), variable
    assert cmake_set(text, "EXTENSION_DEPENDS") == "PyTorch"
    ordered = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(LRPSegmentation)",
               "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.find(line) for line in ordered]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), positions


# ------------------------------------------------------------------------------------ catalog entry


def test_catalog_entry_has_the_required_keys():
    entry = json.loads(CATALOG.read_text(encoding="utf-8"))
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision",
               "scm_type", "scm_url", "tier"}  # the schema has additionalProperties: false
    assert set(entry) <= allowed, set(entry) - allowed
    assert re.match(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
                    r"slicer-extension-catalog-entry-schema-v1\.0\.\d\.json#$", entry["$schema"])
    assert entry["category"] == cmake_set(TOP_CMAKE.read_text(encoding="utf-8"), "EXTENSION_CATEGORY")
    assert entry["scm_url"].startswith("https://") and entry["scm_revision"]
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["build_subdirectory"] == "."
    assert entry["enabled"] is True


def test_no_qt_and_no_module_level_torch_in_the_slicer_wing():
    """The Slicer wing must stay Qt-free (only LRPSegmentation.py may use Qt), and torch is imported
    only inside the functions that compute (the worker thread)."""
    files = sorted((LIB_DIR / "slicer").glob("*.py"))
    assert {path.name for path in files} >= {"logic.py", "mrml.py", "publish.py", "shortcuts.py", "scene.py"}
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
        assert not imported & {"qt", "ctk", "PythonQt", "PyQt5", "PySide2", "PySide6"}, path.name
        top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
                     for alias in node.names}
        assert "torch" not in top_level, path.name
