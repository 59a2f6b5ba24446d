"""Architecture plugins: installed distributions whose entry points in the group
``lrpsegmentation.architectures`` add architectures to lrpseg (and the Slicer worker).

A distribution is made as pip installs one: a folder on sys.path / PYTHONPATH holding the module and
``<name>-<version>.dist-info/`` with METADATA and entry_points.txt, which importlib.metadata reads.
The working plugin is the shipped example (Resources/Examples/lrpseg-plugin-example)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LRPSegmentationLib.models import create_package, load_package, registry

EXAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "Examples" / "lrpseg-plugin-example"
GROUP = "lrpsegmentation.architectures"


def install_distribution(site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Lay out a distribution in ``site`` as pip does: module files and ``<name>.dist-info``."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return site


def install_example(site: Path) -> tuple[str, str]:
    """The shipped example plugin, its entry point taken from its pyproject.toml."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    entry_points = project["entry-points"][GROUP]
    module = "lrpseg_plugin_example"
    install_distribution(site, project["name"], entry_points, {module: (EXAMPLE / f"{module}.py").read_text(encoding="utf-8")})
    (name, value), = entry_points.items()
    return name, value


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    name, _ = install_example(site)
    monkeypatch.syspath_prepend(str(site))
    yield site, name
    if name in registry._registry:  # loaded by the test: leave the registry as it was
        registry.unregister_architecture(name)
    sys.modules.pop("lrpseg_plugin_example", None)


def test_example_plugin_is_listed_loaded_and_explained_by_lrpseg(plugin_site, tmp_path):
    site, name = plugin_site
    assert name == "example.TinyUNet"
    assert name in registry.available_architectures()
    assert "lrpseg_plugin_example" not in sys.modules  # listing does not import plugins
    torch.manual_seed(0)
    kwargs = {"in_channels": 2, "out_channels": 2, "width": 4}
    model = registry.build_architecture(name, **kwargs).eval()
    package = create_package(model, name, kwargs, ["T1", "T2"], normalization={"type": "zscore", "mask": "none"},
                             class_names=["background", "lesion"], target_spacing=(1.0, 1.0, 1.0),
                             patch_size=(8, 8, 8), name="plugin")
    folder = package.save(tmp_path / "plugin.lrpmodel")
    assert load_package(folder).architecture == name

    case = tmp_path / "case"
    case.mkdir()
    rng = np.random.default_rng(0)
    for sequence in ("T1", "T2"):
        sitk.WriteImage(sitk.GetImageFromArray(rng.gamma(3.0, 50.0, (8, 8, 8)).astype(np.float32)),
                        str(case / f"{sequence}.nrrd"))
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[3:5, 3:5, 3:5] = 1
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(case / "mask.nrrd"))
    argv = [sys.executable, "-m", "LRPSegmentationLib.cli", "--quiet", "explain", "--model", str(folder), "--case",
            str(case), "--region", "mask", "--mask", str(case / "mask.nrrd"), "--output", str(tmp_path / "out"),
            "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8", timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    shares = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))["regions"]["mask"]["shares"]
    assert set(shares) == {"T1", "T2"} and abs(sum(shares.values()) - 1.0) < 1e-6
    # without the plugin installed, the same package is refused in one line that says how to add it
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    argv[-3] = str(tmp_path / "out2")
    done = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8", timeout=300, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "unknown architecture 'example.TinyUNet'" in done.stderr and GROUP in done.stderr


def test_broken_plugins_name_their_entry_point_and_leave_builtins_alone(tmp_path, monkeypatch):
    site = install_distribution(
        tmp_path / "site-packages", "lrpseg-broken-plugin",
        {"broken.Net": "lrpseg_broken_plugin:Net", "broken.Missing": "lrpseg_broken_plugin:Absent",
         "broken.Constant": "lrpseg_broken_plugin:WIDTH", "unet3d": "lrpseg_broken_plugin:Net"},
        {"lrpseg_broken_plugin": "import torch\nWIDTH = 4\nraise ImportError('needs the package lab_layers')\n"})
    monkeypatch.syspath_prepend(str(site))
    names = registry.available_architectures()  # listing imports nothing, so nothing fails
    assert {"broken.Net", "broken.Missing", "unet3d", "nnunet.ensemble"} <= set(names)
    with pytest.raises(ValueError) as error:
        registry.get_builder("broken.Net")
    message = str(error.value)
    assert "\n" not in message
    assert all(part in message for part in ("'broken.Net'", "lrpseg_broken_plugin:Net", "lrpseg-broken-plugin",
                                            "ImportError", "needs the package lab_layers"))
    # a plugin cannot replace a built-in: "unet3d" is still the project's UNet3D
    assert registry.get_builder("unet3d") is registry._BUILTIN["unet3d"]
    assert isinstance(registry.build_architecture("unet3d", in_channels=1, out_channels=2, base_channels=2, depth=1),
                      torch.nn.Module)

    # a plugin whose object is not a builder
    shutil.rmtree(site)
    install_distribution(site, "lrpseg-broken-plugin", {"broken.Constant": "lrpseg_constant_plugin:WIDTH"},
                         {"lrpseg_constant_plugin": "WIDTH = 4\n"})
    with pytest.raises(ValueError, match=r"'broken.Constant': entry point .* is int, not a builder"):
        registry.get_builder("broken.Constant")
    sys.modules.pop("lrpseg_constant_plugin", None)
