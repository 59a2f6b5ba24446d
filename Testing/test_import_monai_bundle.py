"""MONAI bundles as MONAI's model zoo lays them out (configs/inference.json, configs/metadata.json,
models/model.pt; random weights, small sizes), imported by `models.monai_bundle`.

The reference is MONAI itself: its ConfigParser builds the network and runs the preprocessing of the
same (trusted, test-written) config on the same image file, and the package's logits on its own
pipeline's input must equal MONAI's (transposed: MONAI's arrays are (x, y, z), ours (z, y, x)).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

monai = pytest.importorskip("monai")
from monai.bundle import ConfigParser  # noqa: E402
from monai.transforms import NormalizeIntensity, ScaleIntensityRange  # noqa: E402

from LRPSegmentationLib import pipeline  # noqa: E402
from LRPSegmentationLib.engine import explain_region  # noqa: E402
from LRPSegmentationLib.models import create_package, load_package, monai_bundle  # noqa: E402
from LRPSegmentationLib.models.metadata import read_description  # noqa: E402
from LRPSegmentationLib.normalization import normalize, validate_normalization  # noqa: E402
from lrp_models import per_voxel_reference, prepare  # noqa: E402

SIZE = (20, 16, 12)  # (x, y, z) voxels: multiples of the UNet's 4
SPACING = (1.5, 1.5, 2.0)
# LPS direction of an image stored in RAS order (i → Right, j → Anterior, k → Superior).
RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
NETWORK = {"_target_": "UNet", "spatial_dims": 3, "channels": [4, 8, 16], "strides": [2, 2],
           "num_res_units": 1, "norm": "batch"}


def inference_config(network_def: dict, preprocessing: list, inferer: dict | None = None,
                     postprocessing: list | None = None) -> dict:
    """An inference.json shaped like the model zoo's (spleen_ct_segmentation): the keys the import
    reads, and the $-expressions around them that it must never need."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "image_key": "image",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "dataset_dir": "/workspace/data",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "inferer": inferer or {"_target_": "SlidingWindowInferer", "roi_size": list(SIZE), "sw_batch_size": 4,
                               "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing or [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "separate_folder": True}]},
        "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                             "load_dict": {"model": "@network"}},
        "initialize": ["$monai.utils.set_determinism(seed=123)", "$@checkpointloader(@evaluator)"],
        "run": ["$@evaluator.run()"],
    }


def metadata(inputs: dict[str, str], outputs: dict[str, str], modality: str) -> dict:
    """A metadata.json with the model zoo's keys."""
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": "0.1.0", "changelog": {"0.1.0": "test"}, "monai_version": monai.__version__,
        "name": "Test bundle", "task": "segmentation", "description": "A random test network.",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "modality": modality, "num_channels": len(inputs),
                                 "spatial_shape": list(SIZE), "dtype": "float32", "is_patch_data": True,
                                 "channel_def": inputs}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(outputs),
                                 "spatial_shape": list(SIZE), "dtype": "float32", "is_patch_data": True,
                                 "channel_def": outputs}}},
    }


def write_bundle(folder: Path, config: dict, meta: dict | None, weights: bool = True, seed: int = 0) -> Path:
    """The bundle folder; model.pt holds the state dict of MONAI's own network built from the config."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "docs").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    if meta is not None:
        (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    (folder / "docs" / "README.md").write_text("# test bundle\n")
    if weights:
        torch.manual_seed(seed)
        network = monai_network(folder)
        # Non-trivial batch-norm statistics, as after training.
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def monai_parser(folder: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    return parser


def monai_network(folder: Path) -> torch.nn.Module:
    """The network as MONAI builds it from the bundle config (with model.pt's weights when present)."""
    network = monai_parser(folder).get_parsed_content("network_def")
    if (folder / "models" / "model.pt").is_file():
        network.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=True))
    return network.eval()


def write_image(path: Path, array_xyz: np.ndarray, direction=RAS_DIRECTION) -> Path:
    """An image file; ``array_xyz`` is indexed (x, y, z) as MONAI reads it."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)).astype(np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


CT_PREPROCESSING = [
    {"_target_": "LoadImaged", "keys": "@image_key"},
    {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
    {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@pixdim", "mode": "bilinear"},
    {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": -57, "a_max": 164, "b_min": 0,
     "b_max": 1, "clip": True},
    {"_target_": "EnsureTyped", "keys": "@image_key"},
]
MRI_PREPROCESSING = [
    {"_target_": "LoadImaged", "keys": "@image_key", "image_only": False},
    {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
    {"_target_": "Spacingd", "keys": "@image_key", "pixdim": list(SPACING), "mode": "bilinear"},
    {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True, "channel_wise": True},
    {"_target_": "EnsureTyped", "keys": "@image_key"},
]


@pytest.fixture(scope="module")
def ct_bundle(tmp_path_factory) -> Path:
    config = inference_config({**NETWORK, "in_channels": 1, "out_channels": 2}, CT_PREPROCESSING)
    config["pixdim"] = list(SPACING)  # an @reference, as wholeBody_ct_segmentation writes it
    return write_bundle(tmp_path_factory.mktemp("ct") / "spleen_ct_segmentation", config,
                        metadata({"0": "image"}, {"0": "background", "1": "spleen"}, "CT"))


@pytest.fixture(scope="module")
def mri_bundle(tmp_path_factory) -> Path:
    config = inference_config({**NETWORK, "in_channels": 2, "out_channels": 3}, MRI_PREPROCESSING)
    return write_bundle(tmp_path_factory.mktemp("mri") / "brain_mri_segmentation", config,
                        metadata({"0": "T1c", "1": "FLAIR"}, {"0": "background", "1": "oedema", "2": "tumour"},
                                 "MR"), seed=1)


def ct_volume(seed: int = 0) -> np.ndarray:
    """(x, y, z) Hounsfield units: air, soft tissue and bone, partly outside the window."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-300.0, 400.0, size=SIZE)


def test_ct_bundle_gives_monais_logits(ct_bundle, tmp_path):
    assert monai_bundle.detect(ct_bundle) and monai_bundle.detect(ct_bundle / "configs" / "inference.json")
    assert not monai_bundle.detect(tmp_path)
    image = write_image(tmp_path / "ct.nii.gz", ct_volume())
    package = load_package(ct_bundle)  # through the format dispatch
    assert package.sequences == ["image"] and package.class_names == ["background", "spleen"]
    assert package.orientation == "RAS"  # Orientationd(axcodes="RAS")
    assert package.normalization == [{"type": "window", "low": -57.0, "high": 164.0, "range": [0.0, 1.0],
                                      "clip": True}]
    assert package.target_spacing == SPACING and package.patch_size == SIZE[::-1] and package.overlap == 0.5
    assert package.name == "Test bundle"

    case = pipeline.load_case({"image": image}, package)
    x = pipeline.network_input(case, package)
    with torch.no_grad():
        ours = package.build()(x)

    parser = monai_parser(ct_bundle)
    monai_x = parser.get_parsed_content("preprocessing")({"image": str(image)})["image"][None]
    assert tuple(monai_x.shape[2:]) == SIZE  # MONAI's arrays are (x, y, z)
    with torch.no_grad():
        reference = monai_network(ct_bundle)(monai_x.as_tensor())
    assert torch.allclose(x, monai_x.as_tensor().permute(0, 1, 4, 3, 2), atol=1e-6)
    assert torch.allclose(ours, reference.permute(0, 1, 4, 3, 2), atol=1e-5)
    assert (ours - ours.mean()).abs().max() > 0.1  # not a trivial output


def test_orientation_is_applied_to_images_stored_otherwise(ct_bundle, tmp_path):
    """An image stored in LPS order: MONAI flips it into RAS; so does the pipeline (package.orientation)."""
    image = write_image(tmp_path / "lps.nii.gz", ct_volume(), direction=tuple(np.eye(3).ravel()))
    package = monai_bundle.load(ct_bundle)
    x = pipeline.network_input(pipeline.load_case({"image": image}, package), package)
    monai_x = monai_parser(ct_bundle).get_parsed_content("preprocessing")({"image": str(image)})["image"][None]
    assert torch.allclose(x, monai_x.as_tensor().permute(0, 1, 4, 3, 2), atol=1e-6)
    # Without the orientation the network would see MONAI's input flipped in x and y.
    package.orientation = None
    stored = pipeline.network_input(pipeline.load_case({"image": image}, package), package)
    assert torch.allclose(stored, monai_x.as_tensor().flip(2, 3).permute(0, 1, 4, 3, 2), atol=1e-6)
    assert not torch.allclose(stored, x, atol=1e-3)


def test_mri_bundle_gives_monais_logits(mri_bundle, tmp_path):
    rng = np.random.default_rng(2)
    volumes = []
    for c in range(2):
        volume = rng.uniform(50.0, 900.0, size=SIZE) * (1 + c)
        volume[:4] = 0.0  # skull-stripped background: NormalizeIntensityd(nonzero) keeps it 0
        volumes.append(volume)
    files = [write_image(tmp_path / f"c{c}.nii.gz", v) for c, v in enumerate(volumes)]
    package = monai_bundle.load(mri_bundle)
    assert package.sequences == ["T1c", "FLAIR"] and package.class_names == ["background", "oedema", "tumour"]
    assert package.normalization == [validate_normalization({"type": "zscore", "mask": "nonzero"})] * 2
    x = pipeline.network_input(pipeline.load_case(dict(zip(package.sequences, files)), package), package)

    preprocessing = monai_parser(mri_bundle).get_parsed_content("preprocessing")
    monai_x = torch.cat([preprocessing({"image": str(f)})["image"].as_tensor() for f in files])[None]
    assert torch.allclose(x, monai_x.permute(0, 1, 4, 3, 2), atol=1e-5)
    assert (x[0, :, :, :, :4] == 0).all()
    with torch.no_grad():
        ours = package.build()(x)
        reference = monai_network(mri_bundle)(monai_x)
    assert torch.allclose(ours, reference.permute(0, 1, 4, 3, 2), atol=1e-5)


@pytest.mark.parametrize("settings", [
    dict(a_min=-57.0, a_max=164.0, b_min=0.0, b_max=1.0, clip=True),
    dict(a_min=-1000.0, a_max=1000.0, b_min=-1.0, b_max=1.0, clip=False),
    dict(a_min=-175.0, a_max=250.0, b_min=0.0, b_max=1.0, clip=True),
])
def test_window_equals_monais_scale_intensity_range(settings):
    values = np.random.default_rng(3).uniform(-1500.0, 1500.0, size=(6, 7, 8)).astype(np.float32)
    method = {"type": "window", "low": settings["a_min"], "high": settings["a_max"],
              "range": [settings["b_min"], settings["b_max"]], "clip": settings["clip"]}
    expected = np.asarray(ScaleIntensityRange(**settings)(values))
    assert np.allclose(normalize(values, method), expected, atol=1e-6)


@pytest.mark.parametrize("transform, settings, method", [
    ("ScaleIntensity", dict(minv=-1.0, maxv=1.0),
     {"type": "percentile", "lower": 0.0, "upper": 100.0, "range": [-1.0, 1.0], "mask": "none"}),
    ("ScaleIntensityRangePercentiles", dict(lower=2.0, upper=98.0, b_min=0.0, b_max=1.0, clip=True),
     {"type": "percentile", "lower": 2.0, "upper": 98.0, "range": [0.0, 1.0], "mask": "none"}),
])
def test_percentile_mappings_equal_monai(transform, settings, method):
    """The mapping of ScaleIntensityd and ScaleIntensityRangePercentilesd (see monai_bundle)."""
    import monai.transforms

    values = np.random.default_rng(8).uniform(-50.0, 700.0, size=(6, 7, 8)).astype(np.float32)
    expected = np.asarray(getattr(monai.transforms, transform)(**settings)(values[None]))[0]
    assert np.allclose(normalize(values, method), expected, atol=1e-5)


@pytest.mark.parametrize("nonzero", [True, False])
def test_zscore_equals_monais_normalize_intensity(nonzero):
    values = np.random.default_rng(4).uniform(-50.0, 700.0, size=(6, 7, 8)).astype(np.float32)
    values[:2] = 0.0
    method = {"type": "zscore", "mask": "nonzero" if nonzero else "none"}
    expected = np.asarray(NormalizeIntensity(nonzero=nonzero, channel_wise=True)(values[None]))[0]
    assert np.allclose(normalize(values, method), expected, atol=1e-5)
    if nonzero:  # the foreground mask (statistics inside, applied everywhere) is not MONAI's nonzero
        other = normalize(values, {"type": "zscore", "mask": "foreground", "foreground_threshold": 0})
        assert not np.allclose(other, expected, atol=1e-3)


@pytest.mark.parametrize("method, message", [
    ({"type": "window", "high": 100}, "finite number low"),
    ({"type": "window", "low": 100, "high": -100}, "low < high"),
    ({"type": "window", "low": 0, "high": float("nan")}, "finite number high"),
    ({"type": "window", "low": 0, "high": 100, "range": [1, 0]}, "range must be"),
    ({"type": "window", "low": 0, "high": 100, "range": [0, float("inf")]}, "finite number in range"),
    ({"type": "window", "low": 0, "high": 100, "clip": "yes"}, "clip must be"),
    ({"type": "window", "low": True, "high": 100}, "finite number low"),
    ({"type": "window", "low": 0, "high": 100, "level": 50}, "no setting"),
    ({"type": "percentile", "mask": "nonzero"}, r"mask must be 'foreground' or 'none' \(zscore also"),
])
def test_bad_window_values_are_refused(method, message):
    with pytest.raises(ValueError, match=message) as error:
        validate_normalization(method)
    assert "\n" not in str(error.value)


def test_window_package_round_trip(tmp_path):
    """A CT package made with create_package keeps its window through model.json."""
    network = monai_network_from(NETWORK, 1, 2)
    window = {"type": "window", "low": -57, "high": 164}
    package = create_package(network, "monai.UNet", {k: v for k, v in NETWORK.items() if k != "_target_"}
                             | {"in_channels": 1, "out_channels": 2}, ["CT"], normalization=window,
                             class_names=["background", "spleen"], target_spacing=SPACING, patch_size=(12, 16, 20))
    assert package.normalization == [{"type": "window", "low": -57.0, "high": 164.0, "range": [0.0, 1.0],
                                      "clip": True}]
    saved = load_package(package.save(tmp_path / "ct.lrpmodel"))
    assert saved.normalization == package.normalization
    stored = json.loads((tmp_path / "ct.lrpmodel" / "model.json").read_text(encoding="utf-8"))
    assert stored["input"]["sequences"][0]["normalization"]["type"] == "window"
    # A constant image is fine for a fixed window (no statistics): air everywhere → range[0].
    assert (normalize(np.full((2, 2, 2), -1000.0), window) == 0.0).all()


def monai_network_from(network_def: dict, in_channels: int, out_channels: int) -> torch.nn.Module:
    from monai.networks.nets import UNet

    kwargs = {k: v for k, v in network_def.items() if k != "_target_"}
    return UNet(**kwargs, in_channels=in_channels, out_channels=out_channels)


def test_bundle_explanation_equals_per_voxel_definition(mri_bundle):
    """The axis-reversing wrapper is a permutation: the region explanation stays exact (float64)."""
    package = monai_bundle.load(mri_bundle)
    model = prepare(package.build())
    x = torch.randn((1, 2) + package.patch_size, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    region = torch.zeros(package.patch_size, dtype=torch.bool)
    region[5:7, 6:9, 3] = True
    result = explain_region(model, x, region, target=2, composite="epsilon", device="cpu")
    reference, used = per_voxel_reference(model, x, region, 2, "epsilon")
    assert used >= 4
    assert float((result.relevance - reference).abs().max() / reference.abs().max()) <= 1e-6


def test_describe_is_torch_free_and_matches_load(mri_bundle):
    code = ("import sys; from pathlib import Path; from LRPSegmentationLib.models import monai_bundle; "
            f"d = monai_bundle.describe(Path({str(mri_bundle)!r})); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(d.sequences, d.class_names, d.patch_size)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['T1c', 'FLAIR'] ['background', 'oedema', 'tumour'] [12, 16, 20]"
    assert read_description(mri_bundle) == monai_bundle.describe(mri_bundle)  # what the Slicer module reads


# --------------------------------------------------------------------------------------------
# What cannot be imported: one line naming the key, transform or file
# --------------------------------------------------------------------------------------------
def edited_bundle(tmp_path: Path, edit, meta: bool = True, weights: bool = True) -> Path:
    config = inference_config({**NETWORK, "in_channels": 2, "out_channels": 3}, [dict(t) for t in MRI_PREPROCESSING])
    edit(config)
    return write_bundle(tmp_path / "bundle", config,
                        metadata({"0": "T1c", "1": "FLAIR"}, {"0": "bg", "1": "a", "2": "b"}, "MR") if meta else None,
                        weights=False) if not weights else _with_weights(tmp_path, config, meta)


def _with_weights(tmp_path: Path, config: dict, meta: bool) -> Path:
    folder = write_bundle(tmp_path / "bundle", config,
                          metadata({"0": "T1c", "1": "FLAIR"}, {"0": "bg", "1": "a", "2": "b"}, "MR") if meta else None,
                          weights=False)
    torch.save(monai_network_from(NETWORK, 2, 3).state_dict(), folder / "models" / "model.pt")
    return folder


def _insert(transform: dict):
    return lambda config: config["preprocessing"]["transforms"].insert(3, transform)


@pytest.mark.parametrize("edit, error, message", [
    (_insert({"_target_": "HistogramNormalized", "keys": "image"}), ValueError,
     r"'preprocessing::transforms::3' \(HistogramNormalized\): preprocessing transform HistogramNormalized has no "
     r"equivalent"),
    (lambda c: c.update(network_def="$monai.networks.nets.UNet(spatial_dims=3, in_channels=2, out_channels=3)"),
     ValueError, r"'network_def' is a Python expression"),
    (lambda c: c["network_def"].update(channels="$[4, 8, 16]"), ValueError,
     r"'network_def::channels' is a Python expression"),
    (lambda c: c["network_def"].update(_target_="scripts.net.MyUNet"), ValueError,
     r"'network_def' names 'scripts.net.MyUNet', which is not a class of monai.networks.nets"),
    (lambda c: c["network_def"].update(_target_="HighResNet"), ValueError,
     r"network_def HighResNet is not an architecture LRPSegmentation explains"),
    (lambda c: c["postprocessing"]["transforms"].__setitem__(0, {"_target_": "Activationsd", "keys": "pred",
                                                                 "sigmoid": True}),
     ValueError, r"applies a sigmoid: the bundle predicts overlapping labels"),
    (lambda c: c["preprocessing"]["transforms"][3].update(channel_wise=False), ValueError,
     r"channel_wise false uses statistics of all 2 channels"),
    (_insert({"_target_": "ScaleIntensityd", "keys": "image", "channel_wise": True}), ValueError,
     r"follows ScaleIntensity: chained intensity transforms"),
    (lambda c: c["preprocessing"]["transforms"].pop(2), ValueError, r"has no Spacingd"),
    (_insert({"_target_": "CropForegroundd", "keys": "image", "source_key": "image"}), ValueError,
     r"\(CropForegroundd\) crops each image to its foreground box"),
    (lambda c: c.update(inferer={"_target_": "SimpleInferer"}), ValueError, r"only SlidingWindowInferer"),
    (lambda c: c["preprocessing"]["transforms"][2].update(pixdim="@missing_key"), ValueError,
     r"no 'missing_key'"),
    (lambda c: c["preprocessing"]["transforms"].insert(2, {"_target_": "CastToTyped", "keys": "image",
                                                           "dtype": "$torch.int16"}), ValueError,
     r"CastToTyped casts to dtype '\$torch.int16', which changes the values"),
    (_insert({"_target_": "Orientationd", "keys": "image", "axcodes": "RAP"}), ValueError,
     r"\(Orientationd\) axcodes must be three letters, one of each pair L/R, P/A, I/S.*got 'RAP'"),
    (_insert({"_target_": "Orientationd", "keys": "image"}), ValueError,
     r"\(Orientationd\) has neither axcodes nor as_closest_canonical"),
    (_insert({"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": [["R", "L"], ["A", "P"],
                                                                                        ["S", "I"]]}),
     ValueError, r"\(Orientationd\) has labels .*only MONAI's default"),
    (lambda c: (c["preprocessing"]["transforms"][0].update(affine_lps_to_ras=False),
                c["preprocessing"]["transforms"].insert(2, {"_target_": "Orientationd", "keys": "image",
                                                            "axcodes": "RAS"})),
     ValueError, r"follows a LoadImaged with affine_lps_to_ras=false"),
])
def test_unmappable_bundles_give_one_line_errors(tmp_path, edit, error, message):
    folder = edited_bundle(tmp_path, edit)
    with pytest.raises(error, match=message) as raised:
        monai_bundle.load(folder)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("arguments, orientation", [
    ({"axcodes": "LPS"}, "LPS"), ({"axcodes": "ras", "labels": None}, "RAS"), ({"as_closest_canonical": True}, "RAS"),
])
def test_orientationd_arguments_give_the_package_orientation(tmp_path, arguments, orientation):
    folder = edited_bundle(tmp_path, _insert({"_target_": "Orientationd", "keys": "image", **arguments}),
                           weights=False)
    assert monai_bundle.describe(folder).orientation == orientation


class Opaque:
    """A pickled object in a checkpoint: weights_only refuses it, nothing of it runs."""


def test_weights_problems_give_one_line_errors(tmp_path):
    folder = edited_bundle(tmp_path, lambda c: None, weights=False)
    with pytest.raises(FileNotFoundError, match=r"models/model.pt is missing"):
        monai_bundle.load(folder)
    scripted = torch.jit.script(monai_network_from(NETWORK, 2, 3))
    scripted.save(str(folder / "models" / "model.ts"))
    with pytest.raises(ValueError, match=r"only the TorchScript models/model.ts.*torch.save\(network.state_dict"):
        monai_bundle.load(folder)
    scripted.save(str(folder / "models" / "model.pt"))
    with pytest.raises(ValueError, match=r"is a TorchScript archive"):
        monai_bundle.load(folder)

    torch.save({"model": monai_network_from(NETWORK, 2, 3).state_dict(), "trainer": Opaque()},
               folder / "models" / "model.pt")
    with pytest.raises(ValueError, match=r"cannot be read as tensors only \(weights_only\)") as error:
        monai_bundle.load(folder)
    assert "\n" not in str(error.value)
    # MONAI's CheckpointSaver layout: {"model": state_dict, "optimizer": ...} (plain values only).
    state = monai_network_from(NETWORK, 2, 3).state_dict()
    torch.save({"model": state, "epoch": 3}, folder / "models" / "model.pt")
    assert torch.equal(monai_bundle.load(folder).state_dict["network.model.0.conv.unit0.conv.weight"],
                       state["model.0.conv.unit0.conv.weight"])
    torch.save({"epoch": 3}, folder / "models" / "model.pt")
    with pytest.raises(ValueError, match=r"holds \['epoch'\], not a state dict"):
        monai_bundle.load(folder)
    torch.save({k: v for k, v in state.items() if "model.0." not in k}, folder / "models" / "model.pt")
    with pytest.raises(ValueError, match=r"missing key\(s\): network.model.0"):
        monai_bundle.load(folder)


def test_generic_names_without_metadata(tmp_path):
    package = monai_bundle.load(edited_bundle(tmp_path, lambda c: None, meta=False))
    assert package.sequences == ["channel 0", "channel 1"]
    assert package.class_names == ["class 0", "class 1", "class 2"]
    assert any("not the bundle's own names" in note for note in package.training_info["notes"])


def test_lrpseg_explain_runs_on_a_bundle_folder(mri_bundle, tmp_path):
    """`lrpseg explain --model BUNDLE` as a process: the format is detected (models.formats), no option."""
    package = load_package(mri_bundle)  # the dispatch every front end uses
    assert package.architecture == monai_bundle.BUNDLE_ARCHITECTURE and package.sequences == ["T1c", "FLAIR"]
    rng = np.random.default_rng(6)
    files = [write_image(tmp_path / f"{name}.nii.gz", rng.uniform(10.0, 500.0, size=SIZE)) for name in ("t1c", "flair")]
    mask = np.zeros(SIZE, dtype=np.uint8)
    mask[8:12, 6:10, 4:8] = 1
    sitk_mask = write_image(tmp_path / "mask.nii.gz", mask)
    done = subprocess.run(
        [sys.executable, "-m", "LRPSegmentationLib.cli", "explain", "--model", str(mri_bundle),
         "--sequence", f"T1c={files[0]}", "--sequence", f"FLAIR={files[1]}", "--region", "mask",
         "--mask", str(sitk_mask), "--target", "tumour", "--output", str(tmp_path / "out"), "--device", "cpu"],
        capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["model"] == "Test bundle" and summary["sequences"] == ["T1c", "FLAIR"]
    region = summary["regions"]["mask"]
    assert region["voxels_used"] + region["voxels_excluded"] == int(mask.sum())
    assert abs(sum(region["shares"].values()) - 1.0) < 1e-6
    for name in ("T1c", "FLAIR"):
        assert (tmp_path / "out" / "mask" / f"relevance_{name}.nrrd").is_file()
    segmentation = sitk.ReadImage(str(tmp_path / "out" / "segmentation.nrrd"))
    assert segmentation.GetSize() == SIZE and segmentation.GetDirection() == RAS_DIRECTION


def test_saved_bundle_package_gives_the_same_logits(ct_bundle, tmp_path):
    """A bundle written as a .lrpmodel (what `lrpseg import` does) keeps its window and its logits."""
    package = monai_bundle.load(ct_bundle)
    saved = load_package(package.save(tmp_path / "spleen.lrpmodel"))
    assert saved.normalization == package.normalization and saved.patch_size == package.patch_size
    assert saved.orientation == package.orientation == "RAS"
    x = torch.randn((1, 1) + package.patch_size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(saved.build()(x), package.build()(x))
