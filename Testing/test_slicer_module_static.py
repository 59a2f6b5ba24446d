"""Static checks of the Slicer module and extension files (no Slicer, no Qt, no torch needed).

- every ``self.ui.<name>`` the module uses is a widget of the .ui file;
- LRPSegmentation.py byte-compiles and imports no torch at module level;
- the module CMakeLists lists every .py under LRPSegmentationLib (walked, so a new file that is
  not listed fails here) and every file it lists exists;
- the .ui parses as XML, its SlicerParameterName bindings name parameter-node fields, and each bound
  widget has the type the parameter node wrapper can connect (Slicer's guiConnectors.py);
- Browse selects a .lrpmodel folder (a directory dialog), the help link points at a README section;
- the top-level CMakeLists and the Extensions Index catalog entry carry the required fields, the
  catalog entry is formatted as the index's prettier config writes it, the LICENSE is there and
  every icon / screenshot URL names a file of the repository.
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
LICENSE = ROOT / "LICENSE"
README = ROOT / "README.md"


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


#: What LRPSegmentation.py may import from the library at Slicer's start-up: standard library only.
START_UP_IMPORTS = {"LRPSegmentationLib.vocabulary", "LRPSegmentationLib.slicer.module_logic"}


def test_module_imports_no_torch_at_import_time():
    """torch comes from the PyTorch extension on Apply, never at import; of the library, the module
    imports only standard-library modules at import time (the vocabulary, the Logic's base class)."""
    for node in module_tree().body:
        if isinstance(node, ast.Import):
            assert not any(alias.name.split(".")[0] in {"torch", "LRPSegmentationLib"} for alias in node.names)
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            assert module.split(".")[0] != "torch"
            assert module.split(".")[0] != "LRPSegmentationLib" or module in START_UP_IMPORTS
    loaded = _modules_loaded_by("import " + ", ".join(sorted(START_UP_IMPORTS)))
    assert not loaded & {"numpy", "torch", "vtk", "slicer", "SimpleITK"}, loaded


def _modules_loaded_by(statement: str) -> set[str]:
    """Top-level packages in sys.modules after ``statement`` in a fresh interpreter."""
    script = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", timeout=120,
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


def _class_constant(class_name: str, constant: str):
    cls = next(node for node in module_tree().body if isinstance(node, ast.ClassDef) and node.name == class_name)
    return next(ast.literal_eval(node.value) for node in cls.body
                if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == constant for t in node.targets))


def test_the_inputs_locked_while_a_job_runs_are_widgets_of_the_ui_file():
    locked = _class_constant("LRPSegmentationWidget", "INPUT_WIDGETS")
    assert set(locked) <= set(ui_widgets()), set(locked) - set(ui_widgets())
    for name in ("modelPathLineEdit", "inputsFrame", "referenceVolumeSelector", "regionSegmentSelector",
                 "targetClassComboBox", "compositeComboBox", "deviceComboBox"):
        assert name in locked
    # The buttons that run or cancel a job are managed by updateButtonStates, not locked.
    assert not {"segmentButton", "explainButton"} & set(locked)


def test_browse_selects_a_model_package_folder():
    """ctkPathLineEdit::browse() opens QFileDialog::getExistingDirectory when Files is not among its
    filters (CTK Libs/Widgets/ctkPathLineEdit.cpp): a .lrpmodel package is a folder."""
    filters = ui_widgets()["modelPathLineEdit"].find("property[@name='filters']/set").text.split("|")
    assert "ctkPathLineEdit::Dirs" in filters and "ctkPathLineEdit::Files" not in filters


def test_the_help_link_points_at_the_readme_section_of_the_extension_homepage():
    source = MODULE_PY.read_text(encoding="utf-8")
    assert "getDefaultModuleDocumentationLink" not in source  # Slicer's own docs have no page for the module
    url = next(ast.literal_eval(node.value) for node in module_tree().body if isinstance(node, ast.Assign)
               and any(getattr(target, "id", "") == "HELP_URL" for target in node.targets))
    homepage = cmake_set(TOP_CMAKE.read_text(encoding="utf-8"), "EXTENSION_HOMEPAGE")
    assert url.split("#")[0] == homepage.split("#")[0]

    def github_anchor(heading: str) -> str:
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    anchors = {github_anchor(line.lstrip("#")) for line in README.read_text(encoding="utf-8").splitlines()
               if line.startswith("#")}
    assert url.split("#")[1] in anchors


# ------------------------------------------------------------------------------------ .ui file


def test_ui_file_parses_and_has_a_qmrmlwidget_root():
    root = ElementTree.parse(UI_FILE).getroot()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == "LRPSegmentation"
    declared = {custom.findtext("class") for custom in root.iter("customwidget")}
    used_custom = {w.get("class") for w in ui_widgets().values() if w.get("class", "").startswith(("qMRML", "ctk"))}
    assert used_custom <= declared, f"custom widgets not declared: {used_custom - declared}"


def parameter_fields() -> dict[str, str]:
    """Field name -> its annotation as written, of the module's parameter node wrapper."""
    wrapper = next(node for node in module_tree().body
                   if isinstance(node, ast.ClassDef) and node.name == "LRPSegmentationParameterNode")
    return {node.target.id: ast.unparse(node.annotation) for node in wrapper.body if isinstance(node, ast.AnnAssign)}


#: Widget class -> what Slicer's parameterNodeWrapper connects it to (guiConnectors.py): a plain type,
#: or a type that must carry a validator (a QComboBox needs Choice; a ctkSliderWidget a bounded range).
CONNECTABLE = {"QCheckBox": ("bool",), "qMRMLNodeComboBox": ("vtkMRML",), "QComboBox": ("Choice(",),
               "ctkSliderWidget": ("float", "WithinRange("), "ctkPathLineEdit": ("pathlib.Path",)}


def test_bound_widgets_have_a_connector_for_their_parameter_type():
    fields = parameter_fields()
    for name, widget in ui_widgets().items():
        bound = widget.find("property[@name='SlicerParameterName']/string")
        if bound is None:
            continue
        annotation = fields[bound.text]
        assert all(part in annotation for part in CONNECTABLE[widget.get("class")]), (name, annotation)
    assert fields["modelPath"] == "pathlib.Path"  # the model follows the scene (Close Scene, scene load)


def test_form_layout_rows_are_unique():
    """Two items in one row of a QFormLayout overlap: Qt Designer never writes that, a hand edit can."""
    for layout in ElementTree.parse(UI_FILE).getroot().iter("layout"):
        if layout.get("class") != "QFormLayout":
            continue
        cells = []
        for item in layout.findall("item"):
            span = range(2) if item.get("colspan") == "2" else [int(item.get("column"))]
            cells += [(int(item.get("row")), column) for column in span]
        assert len(cells) == len(set(cells)), layout.get("name")


def test_ui_parameter_bindings_name_parameter_node_fields():
    fields = set(parameter_fields())
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.findtext("string")
    assert bound, "no widget is bound to the parameter node"
    assert set(bound.values()) <= fields, f"bindings to unknown parameters: {set(bound.values()) - fields}"
    assert bound.get("referenceVolumeSelector") == "referenceVolume"
    for widget, field in (("compositeComboBox", "composite"), ("overlayOpacitySliderWidget", "overlayOpacity"),
                          ("replacePreviousCheckBox", "replacePrevious")):
        assert bound.get(widget) == field


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


def test_catalog_entry_is_formatted_as_the_index_prettier_config_writes_it():
    """ExtensionsIndex's .prettierrc.js: prettier-plugin-multiline-arrays with multilineArraysWrapThreshold
    0, so every non-empty array has one element per line; 2-space indent, a final newline."""
    text = CATALOG.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"
    assert not re.search(r"\[[^\]\n]+\]", text), "an array on one line"


def test_the_license_is_apache_2_0():
    text = LICENSE.read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def _repository_file(url: str) -> Path:
    """The repository file a raw.githubusercontent.com URL of the extension's main branch names."""
    match = re.match(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(.+)$", url)
    assert match, url
    return ROOT / match.group(1)


def test_the_icon_and_every_screenshot_url_name_png_files_of_the_repository():
    text = TOP_CMAKE.read_text(encoding="utf-8")
    urls = [cmake_set(text, "EXTENSION_ICONURL"), *cmake_set(text, "EXTENSION_SCREENSHOTURLS").split()]
    assert len(urls) >= 2
    for url in urls:
        path = _repository_file(url)
        assert path.is_file(), f"{url} names {path}, which does not exist"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    screenshot = _repository_file(cmake_set(text, "EXTENSION_SCREENSHOTURLS").split()[0]).read_bytes()
    width, height = int.from_bytes(screenshot[16:20], "big"), int.from_bytes(screenshot[20:24], "big")
    assert width >= 800 and height >= 400  # a real screenshot, not a placeholder


def test_no_qt_and_no_module_level_torch_in_the_slicer_wing():
    """The Slicer wing must stay Qt-free (only LRPSegmentation.py may use Qt), and torch is imported
    only inside the functions that compute (they run in the computation process, slicer/worker.py)."""
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
