"""nnU-Net v2 trained-model folders, built exactly as nnU-Net writes them (random weights, 2 folds),
loaded as they lie on disk: logits against nnU-Net's own computation (network built from the plans
as nnU-Net builds it, folds averaged, mirrored as its predictor), exactness of the ensemble's
explanation, the command line (predict, explain, import) and one-line errors for bad folders."""
from __future__ import annotations

import itertools
import json
import pydoc
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytest.importorskip("dynamic_network_architectures")

from LRPSegmentationLib import cli, pipeline  # noqa: E402
from LRPSegmentationLib.engine import explain_region  # noqa: E402
from LRPSegmentationLib.models import load_package  # noqa: E402
from LRPSegmentationLib.models.metadata import read_description  # noqa: E402
from LRPSegmentationLib.normalization import normalize  # noqa: E402
from lrp_models import per_voxel_reference  # noqa: E402

TRANSPOSE_FORWARD = [2, 0, 1]  # nnU-Net puts the axis of largest spacing first; any permutation will do
ARRAY_SPACING = [1.5, 1.0, 2.0]  # (z, y, x) mm, SimpleITK array order (as nnU-Net reads images)
ARRAY_PATCH = [8, 16, 12]  # (D, H, W)
CHANNELS = {"0": "CT", "1": "MR"}
LABELS = {"background": 0, "liver": 1, "tumour": 2}
CT_PROPERTIES = {"max": 1500.0, "mean": 60.0, "median": 55.0, "min": -1000.0, "percentile_00_5": -150.0,
                 "percentile_99_5": 250.0, "std": 80.0}


def _transposed(values):
    return [values[a] for a in TRANSPOSE_FORWARD]


def make_plans(network_class: str = "dynamic_network_architectures.architectures.unet.PlainConvUNet") -> dict:
    """plans.json as nnU-Net v2 writes it (keys of nnUNetPlans; spacing and patch size transposed)."""
    arch_kwargs = {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
                   "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                   "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                   "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                   "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                   "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset042_Tiny", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": _transposed(ARRAY_SPACING),
        "original_median_shape_after_transp": [40, 40, 40], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": TRANSPOSE_FORWARD, "transpose_backward": [TRANSPOSE_FORWARD.index(i) for i in range(3)],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2, "patch_size": _transposed(ARRAY_PATCH), "median_image_size_in_voxels": [40, 40, 40],
                "spacing": _transposed(ARRAY_SPACING), "normalization_schemes": ["CTNormalization",
                                                                                 "ZScoreNormalization"],
                "use_mask_for_norm": [False, False], "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
                "resampling_fn_seg_kwargs": dict(resampling, is_seg=True, order=1),
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": dict(resampling, order=1),
                "architecture": {"network_class_name": network_class, "arch_kwargs": arch_kwargs,
                                 "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
                "batch_dice": False},
            "3d_fullres_bs4": {"inherits_from": "3d_fullres", "batch_size": 4},
        },
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": CT_PROPERTIES,
            "1": {"max": 900.0, "mean": 300.0, "median": 290.0, "min": 0.0, "percentile_00_5": 10.0,
                  "percentile_99_5": 800.0, "std": 120.0}},
    }


def nnunet_network(plans: dict, configuration: str = "3d_fullres") -> torch.nn.Module:
    """The network as nnU-Net builds it (get_network_from_plans: pydoc.locate, deep supervision off)."""
    arch = plans["configurations"][configuration]["architecture"]
    kwargs = dict(arch["arch_kwargs"])
    for key in arch["_kw_requires_import"]:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    network = pydoc.locate(arch["network_class_name"])(input_channels=len(CHANNELS), num_classes=len(LABELS),
                                                      deep_supervision=False, **kwargs)
    network.apply(network.initialize)  # nnU-Net's He initialization
    return network


class Intruder:
    """Not a type an nnU-Net checkpoint holds."""


def write_fold(folder: Path, fold: int, plans: dict, dataset: dict, intruder: bool = False) -> None:
    """fold_N/checkpoint_final.pth with the keys and value types of nnUNetTrainer.save_checkpoint."""
    torch.manual_seed(10 + fold)
    network = nnunet_network(plans)
    with torch.no_grad():  # non-trivial norm affine parameters
        for module in network.modules():
            if isinstance(module, torch.nn.InstanceNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    network(torch.randn(1, len(CHANNELS), *ARRAY_PATCH)).sum().backward()
    optimizer.step()
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5), np.float64(0.6)], "ema_fg_dice": [0.5, 0.51],
                    "dice_per_class_or_region": [[np.float64(0.4), np.float64(0.7)]] * 2,
                    "train_losses": [np.float32(-0.2), np.float32(-0.3)], "val_losses": [np.float32(-0.1)] * 2,
                    "lrs": [0.01, 0.0099], "epoch_start_timestamps": [1.7e9, 1.7e9 + 60],
                    "epoch_end_timestamps": [1.7e9 + 59, 1.7e9 + 119]},
        "_best_ema": np.float64(0.51),
        "current_epoch": 1000,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold, "dataset_json": dataset,
                      "device": torch.device("cuda", 0)},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    if intruder:
        checkpoint["init_args"]["extra"] = Intruder()
    (folder / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")


def make_folder(root: Path, plans: dict | None = None, folds=(0, 1)) -> Path:
    folder = root / "Dataset042_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    plans = plans or make_plans()
    dataset = {"channel_names": CHANNELS, "labels": LABELS, "numTraining": 12, "file_ending": ".nii.gz"}
    (folder / "plans.json").write_text(json.dumps(plans, indent=4))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=4))
    for fold in folds:
        write_fold(folder, fold, plans, dataset)
    return folder


# -- nnU-Net's own computation, on the same preprocessed input ---------------------------------
def nnunet_normalize(images: np.ndarray) -> np.ndarray:
    """nnU-Net's CTNormalization (channel 0) and ZScoreNormalization without mask (channel 1)."""
    ct = np.clip(images[0].astype(np.float32), CT_PROPERTIES["percentile_00_5"], CT_PROPERTIES["percentile_99_5"])
    ct = (ct - CT_PROPERTIES["mean"]) / max(CT_PROPERTIES["std"], 1e-8)
    mr = images[1].astype(np.float32)
    mr = (mr - mr.mean()) / max(mr.std(), 1e-8)
    return np.stack([ct, mr])


def nnunet_logits(folder: Path, data: torch.Tensor, mirroring: bool = True) -> torch.Tensor:
    """nnUNetPredictor on one patch: per fold the mirrored mean (_internal_maybe_mirror_and_predict),
    summed over folds then divided by their number. ``data``: (C, D, H, W) preprocessed, in our
    (= SimpleITK) axis order; transposed as nnU-Net's preprocessing does, and the logits back."""
    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    network = nnunet_network(plans).eval()
    x = data.permute(0, *[a + 1 for a in plans["transpose_forward"]])[None]
    prediction = None
    for fold in (0, 1):
        checkpoint = torch.load(folder / f"fold_{fold}" / "checkpoint_final.pth", weights_only=False)
        network.load_state_dict(checkpoint["network_weights"])
        mirror_axes = checkpoint["inference_allowed_mirroring_axes"] if mirroring else None
        with torch.no_grad():
            logits = network(x)
            if mirror_axes is not None:
                axes = [m + 2 for m in mirror_axes]
                combinations = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
                for flip in combinations:
                    logits += torch.flip(network(torch.flip(x, flip)), flip)
                logits /= len(combinations) + 1
        prediction = logits if prediction is None else prediction + logits
    prediction /= 2
    return prediction[0].permute(0, *[a + 1 for a in plans["transpose_backward"]])


def write_case(folder: Path, seed: int = 3) -> Path:
    """A CT + MR case on the model's grid (spacing and patch size: one window, no resampling)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    ct = rng.normal(40.0, 150.0, ARRAY_PATCH).astype(np.float32)  # partly outside the CT window
    mr = rng.gamma(4.0, 60.0, ARRAY_PATCH).astype(np.float32)
    for name, array in (("CT", ct), ("MR", mr)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(ARRAY_SPACING[::-1])  # (x, y, z)
        sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
    return folder


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("nnunet"))


@pytest.fixture(scope="module")
def case_folder(tmp_path_factory) -> Path:
    return write_case(tmp_path_factory.mktemp("case") / "case")


def run(capfd, *argv):
    code = cli.main(["--quiet", *[str(a) for a in argv]])
    out, err = capfd.readouterr()
    return code, out, err


# -- reading the folder -----------------------------------------------------------------------
def test_description_maps_axes_names_and_normalization(model_folder):
    description = read_description(model_folder)
    assert description.sequences == ["CT", "MR"] and description.class_names == ["background", "liver", "tumour"]
    assert list(description.patch_size) == ARRAY_PATCH  # (D, H, W) after undoing transpose_forward
    assert list(description.target_spacing) == ARRAY_SPACING[::-1]  # (x, y, z)
    assert description.architecture == "nnunet.ensemble"
    assert description.architecture_kwargs["folds"] == ["0", "1"]
    assert description.normalization[1] == {"type": "zscore", "mask": "none"}
    # CTNormalization = a clipped window whose ends map to (percentile - mean) / std: nnU-Net's numbers
    values = np.random.default_rng(0).normal(50, 300, (4, 5, 6))
    expected = (np.clip(values, -150.0, 250.0) - 60.0) / 80.0
    assert np.allclose(normalize(values, description.normalization[0]), expected, atol=1e-5)


def test_description_is_torch_free(model_folder):
    code = ("import sys; from LRPSegmentationLib.models.metadata import read_description; "
            f"d = read_description({str(model_folder)!r}); assert d.sequences == ['CT', 'MR']; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- logits and explanations ------------------------------------------------------------------
def test_logits_equal_nnunet_predictor_and_cli_predict(model_folder, case_folder, tmp_path, capfd):
    package = load_package(model_folder)
    assert package.training_info["mirroring"] and package.training_info["mirror_axes"] == [0, 1, 2]
    model = package.build()
    case = pipeline.load_case(case_folder, package)
    x = pipeline.network_input(case, package)
    reference = nnunet_logits(model_folder, torch.from_numpy(nnunet_normalize(case.images)))
    assert torch.allclose(x[0], torch.from_numpy(nnunet_normalize(case.images)), atol=1e-5)
    logits, _ = pipeline.predict(model, x, package, "cpu")
    assert np.abs(logits - reference.numpy()).max() <= 1e-4 * np.abs(reference.numpy()).max()
    # without mirroring: the plain fold mean, which differs
    plain = load_package(model_folder, mirroring=False)
    assert plain.architecture_kwargs["mirror_axes"] == []
    plain_logits, _ = pipeline.predict(plain.build(), x, plain, "cpu")
    plain_reference = nnunet_logits(model_folder, x[0], mirroring=False).numpy()
    assert np.abs(plain_logits - plain_reference).max() <= 1e-4 * np.abs(plain_reference).max()
    assert np.abs(plain_logits - logits).max() > 1e-3 * np.abs(logits).max()

    # `lrpseg predict --model FOLDER`: nnU-Net's labels wherever the decision is not a near-tie
    code, out, err = run(capfd, "predict", "--model", model_folder, "--case", case_folder, "--output",
                         tmp_path / "seg.nrrd")
    assert code == 0, err
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nrrd")))
    top2 = torch.topk(reference, 2, dim=0).values
    clear = (top2[0] - top2[1]).numpy() > 1e-3
    assert clear.mean() > 0.9
    assert np.array_equal(labels[clear], reference.argmax(0).numpy()[clear])


def test_fold_ensemble_with_mirroring_explains_exactly(model_folder):
    package = load_package(model_folder)
    model = package.build(dtype=torch.float64)
    assert len(model.folds) == 2 and len(model.flips) == 8
    shape = (4, 8, 4)  # small (the per-voxel loop traces 2 folds × 8 mirrorings per voxel); fits the network
    x = torch.randn(1, 2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    region = torch.zeros(shape, dtype=torch.bool)
    region[1:3, 5, 2] = True
    result = explain_region(model, x, region, target=2, composite="epsilon_gamma_box", device="cpu")
    reference, used = per_voxel_reference(model, x, region, 2, "epsilon_gamma_box")
    assert result.n_used == used > 0
    assert float((result.relevance - reference).abs().max() / reference.abs().max()) <= 1e-5


# -- the command line ---------------------------------------------------------------------------
def test_cli_explain_runs_as_a_process(model_folder, case_folder, tmp_path):
    done = subprocess.run([sys.executable, "-m", "LRPSegmentationLib.cli", "--quiet", "explain", "--model",
                           str(model_folder), "--case", str(case_folder), "--region", "predicted", "--target",
                           "liver", "--output", str(tmp_path / "out"), "--device", "cpu"],
                          capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    shares = summary["regions"]["predicted"]["shares"]
    assert set(shares) == {"CT", "MR"} and abs(sum(shares.values()) - 1.0) < 1e-6


def test_import_round_trip_gives_identical_logits(model_folder, tmp_path, capfd):
    output = tmp_path / "tiny.lrpmodel"
    code, out, err = run(capfd, "import", model_folder, "--output", output)
    assert code == 0, err
    assert "nnunet.ensemble" in out
    source, imported = load_package(model_folder), load_package(output)
    assert imported.sequences == source.sequences and imported.normalization == source.normalization
    assert imported.target_spacing == source.target_spacing and imported.patch_size == source.patch_size
    x = torch.randn(1, 2, *ARRAY_PATCH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(source.build()(x), imported.build()(x))
    # refuses to overwrite without --overwrite; one fold without mirroring with it
    code, _, err = run(capfd, "import", model_folder, "--output", output)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    code, _, err = run(capfd, "import", model_folder, "--output", output, "--folds", "1", "--no-mirroring",
                       "--overwrite")
    assert code == 0, err
    single = load_package(output)
    assert single.architecture_kwargs["folds"] == ["1"] and single.architecture_kwargs["mirror_axes"] == []
    # options belong to other formats
    code, _, err = run(capfd, "import", output, "--output", tmp_path / "copy.lrpmodel", "--no-mirroring")
    assert code == 2 and "takes no import options" in err
    # cohort workers load the folder with the defaults: other choices go through a package
    code, _, err = run(capfd, "cohort", "--model", model_folder, "--cases", tmp_path, "--output", tmp_path / "c",
                       "--no-mirroring")
    assert code == 2 and "lrpseg import" in err and not (tmp_path / "c").exists()


# -- bad folders: one line, exit status 2 ---------------------------------------------------------
def test_reorienting_reader_gives_the_ras_orientation_nnunet_reads(model_folder, tmp_path):
    """NibabelIOWithReorient: nibabel's as_reoriented(io_orientation(affine)), then (z, y, x) as SimpleITK
    reads; the package's orientation "RAS" gives the pipeline the same array from a file stored otherwise."""
    nibabel = pytest.importorskip("nibabel")
    from nibabel.orientations import io_orientation

    assert load_package(model_folder).orientation is None  # SimpleITKIO: the stored voxel order
    folder = _broken(tmp_path, model_folder, "reorient")
    _edit_plans(folder, lambda p: p.update(image_reader_writer="NibabelIOWithReorient"))
    package = load_package(folder)
    assert package.orientation == "RAS" and read_description(folder).orientation == "RAS"
    rng = np.random.default_rng(5)
    files = {}
    for name in package.sequences:  # stored with the i axis toward Posterior, j Inferior, k Right
        image = sitk.GetImageFromArray(rng.normal(100.0, 30.0, (12, 8, 16)).astype(np.float32))
        image.SetSpacing((1.0, 1.5, 2.0))  # in RAS order (2.0, 1.0, 1.5): the model's (x, y, z) spacing
        image.SetDirection((0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
        files[name] = tmp_path / f"{name}.nii.gz"
    case = pipeline.load_case(files, package)
    assert case.geometry.spacing == package.target_spacing  # not resampled: the voxels as nnU-Net reads them
    for channel, name in enumerate(package.sequences):
        nib_image = nibabel.load(files[name])
        nnunet_array = nib_image.as_reoriented(io_orientation(nib_image.affine)).get_fdata().transpose((2, 1, 0))
        assert np.array_equal(case.images[channel], nnunet_array.astype(np.float32))


def _broken(tmp_path: Path, model_folder: Path, name: str) -> Path:
    folder = tmp_path / name / model_folder.name
    shutil.copytree(model_folder, folder)
    return folder


def _edit_plans(folder: Path, edit) -> None:
    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    edit(plans)
    (folder / "plans.json").write_text(json.dumps(plans))


@pytest.mark.parametrize("breakage, expected", [
    ("missing_fold", "missing fold(s): fold_5/checkpoint_final.pth"),
    ("unfinished_fold", "fold_2 has no checkpoint_final.pth"),
    ("unknown_class", "network class 'mylab.nets.EvilUNet'"),
    ("unknown_nonlin", "nonlin to 'os.system'"),
    ("unexpected_object", "test_import_nnunet.Intruder"),
    ("missing_plans", "plans.json is missing"),
    ("missing_dataset", "dataset.json is missing"),
    ("unknown_normalization", "normalization scheme 'MyNormalization'"),
    ("2d", "is not 3D"),
    ("unknown_reader", "image_reader_writer 'MyReader' is not supported (supported: SimpleITKIO, NibabelIO, "
                       "NibabelIOWithReorient)"),
])
def test_bad_folders_exit_2_with_one_line(model_folder, case_folder, tmp_path, capfd, breakage, expected):
    folder = _broken(tmp_path, model_folder, breakage)
    extra = []
    if breakage == "missing_fold":
        extra = ["--folds", "0", "5"]
    elif breakage == "unfinished_fold":
        (folder / "fold_2").mkdir()
        (folder / "fold_2" / "checkpoint_latest.pth").write_bytes(b"")
    elif breakage == "unknown_class":
        _edit_plans(folder, lambda p: p["configurations"]["3d_fullres"]["architecture"].update(
            network_class_name="mylab.nets.EvilUNet"))
    elif breakage == "unknown_nonlin":
        _edit_plans(folder, lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(
            nonlin="os.system"))
    elif breakage == "unexpected_object":
        plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
        write_fold(folder, 1, plans, json.loads((folder / "dataset.json").read_text(encoding="utf-8")), intruder=True)
    elif breakage in ("missing_plans", "missing_dataset"):
        (folder / f"{breakage.split('_')[1]}.json").unlink()
    elif breakage == "unknown_normalization":
        _edit_plans(folder, lambda p: p["configurations"]["3d_fullres"].update(
            normalization_schemes=["CTNormalization", "MyNormalization"]))
    elif breakage == "2d":
        _edit_plans(folder, lambda p: p["configurations"]["3d_fullres"].update(patch_size=[16, 12]))
    elif breakage == "unknown_reader":
        _edit_plans(folder, lambda p: p.update(image_reader_writer="MyReader"))
    code, out, err = run(capfd, "predict", "--model", folder, *extra, "--case", case_folder,
                         "--output", tmp_path / "seg.nrrd")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: cannot load the model package"), err
    assert expected in err, err
    assert not (tmp_path / "seg.nrrd").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_unknown_folder_and_single_files_say_what_is_accepted(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capfd, "import", tmp_path / "empty", "--output", tmp_path / "x.lrpmodel")
    assert code == 2 and err.count("\n") == 1
    assert all(k in err for k in (".lrpmodel folder", "nnU-Net v2 trained-model folder", "MONAI bundle folder"))

    scripted = torch.jit.script(torch.nn.Conv3d(1, 2, 1))
    scripted.save(str(tmp_path / "model.pt"))
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    for name, kind in (("model.pt", "a TorchScript archive"), ("model.onnx", "an ONNX model")):
        code, _, err = run(capfd, "import", tmp_path / name, "--output", tmp_path / "x.lrpmodel")
        assert code == 2 and err.count("\n") == 1 and kind in err and "create_package" in err, err
    # and the engine, given a ScriptModule
    with pytest.raises(ValueError, match="TorchScript"):
        explain_region(scripted.eval(), torch.randn(1, 1, 4, 4, 4), torch.ones(4, 4, 4, dtype=torch.bool), 1)


# -- the Slicer module and its computation process ---------------------------------------------------
def test_slicer_module_and_worker_accept_the_folder(model_folder, case_folder, tmp_path):
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    from LRPSegmentationLib.slicer import module_logic
    from LRPSegmentationLib.slicer.worker import PROTOCOL, Worker

    module = module_logic.ModuleLogic()
    description = module.readPackageInfo(str(model_folder))  # what the selector shows, before torch exists
    assert description.sequences == ["CT", "MR"] and description.class_names == ["background", "liver", "tumour"]
    assert "nnU-Net v2" in module.describePackage(description)
    assert module.modelPath(description) == str(model_folder)

    package = load_package(model_folder)
    case = pipeline.load_case(case_folder, package)
    x = pipeline.network_input(case, package)
    np.save(tmp_path / "x.npy", x[0].numpy())  # the module sends the normalized input on the reference grid
    worker = Worker(tmp_path)
    for request in (dict(type="load_model", path=str(model_folder)),
                    dict(type="set_case", case_id="c", inputs={"npy": str(tmp_path / "x.npy")}, sequences=["CT", "MR"]),
                    dict(type="segment", case_id="c", model=str(model_folder), device="cpu")):
        answer = worker.handle(dict(protocol=PROTOCOL, id="i", **request))
        assert answer["type"] == "result", answer
    _, expected = pipeline.predict(package.build(), x, package, "cpu")
    assert np.array_equal(np.load(answer["labels"]["npy"]), expected)
