"""Built-in architectures (engine exactness on each) and the model package format."""
from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from LRPSegmentationLib.engine import explain_region, make_composite, trace
from LRPSegmentationLib.models import (FORMAT_VERSION, ModelPackage, UNet3D, available_architectures,
                                       build_architecture, create_package, load_package, register_architecture,
                                       unregister_architecture)
from lrp_models import per_voxel_reference, randomize_norms

SEQUENCES = ["T2", "plainT1", "T1-20s", "T1-60s", "T1-120s", "T1-15min"]

# Tiny float64 versions of every built-in architecture: (kwargs, input spatial size). Sizes follow
# each net's divisibility. BasicUNet takes any size (it replicate-pads odd sizes when upsampling:
# odd sizes here exercise that path) but downsamples 4×, and its bottleneck instance norm needs
# more than one voxel.
TINY = {
    "unet3d": (dict(in_channels=6, out_channels=2, base_channels=4, depth=2), (8, 8, 8)),
    # MONAI's defaults: residual units, strided convolutions, InstanceNorm (no affine), PReLU.
    "monai.UNet": (dict(channels=(4, 8, 16), strides=(2, 2), num_res_units=2), (8, 8, 8)),
    # The same with BatchNorm, so that folding randomized running statistics is exercised too.
    "monai.UNet-batchnorm": (dict(channels=(4, 8, 16), strides=(2, 2), num_res_units=2, norm="batch"),
                             (8, 8, 8)),
    "monai.BasicUNet": (dict(features=(2, 2, 4, 4, 4, 2)), (33, 17, 17)),
    "monai.DynUNet": (dict(kernel_size=(3, 3, 3), strides=(1, 2, 2), filters=(4, 8, 16), deep_supervision=True,
                           deep_supr_num=1, res_block=True), (8, 8, 8)),
}


def tiny_model(case: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(model in eval, float64, non-trivial weights; input (1, 6, D, H, W); a 6-voxel region)."""
    architecture = case.split("-")[0]
    if architecture.startswith("monai."):
        pytest.importorskip("monai")
    kwargs, spatial = TINY[case]
    torch.manual_seed(0)
    model = randomize_norms(build_architecture(architecture, **kwargs))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.PReLU):  # fresh PReLUs all have slope 0.25
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 0.5)
    model = model.double().eval()
    x = torch.randn((1, 6) + spatial, dtype=torch.float64, generator=generator)
    region = torch.zeros(spatial, dtype=torch.bool)
    d, h, w = (s // 2 for s in spatial)
    region[d:d + 2, h, w:w + 2] = True      # a small blob inside
    region[0, 0, 0] = True                  # a corner (padding everywhere in its receptive field)
    region[d, 1, spatial[2] - 1] = True     # a border voxel
    return model, x, region


ARCHITECTURE_CASES = list(TINY)


@pytest.fixture(scope="module", params=ARCHITECTURE_CASES)
def architecture_case(request):
    return (request.param,) + tiny_model(request.param)


# --------------------------------------------------------------------------------------------
# Engine exactness on every built-in architecture
# --------------------------------------------------------------------------------------------
def test_traced_logits_equal_forward(architecture_case):
    _, model, x, _ = architecture_case
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor), "in eval every built-in network returns only the main logits"
    assert out.shape == (1, 2) + x.shape[2:]
    assert torch.equal(trace(model, x).logits, out)


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_gamma_box"])
def test_region_equals_per_voxel_reference(architecture_case, composite):
    _, model, x, region = architecture_case
    result = explain_region(model, x, region, target=1, composite=composite, device="cpu")
    reference, used = per_voxel_reference(model, x, region, 1, composite)
    assert used >= 4, "too few voxels kept for a meaningful comparison"
    assert result.n_used == used
    assert result.n_used + result.n_excluded == int(region.sum())
    error = float((result.relevance - reference).abs().max() / reference.abs().max())
    assert error <= 1e-5
    assert result.diagnostics["conservation_error"] <= 1e-10


def test_dynunet_deep_supervision_only_in_training():
    model, x, _ = tiny_model("monai.DynUNet")
    model.train()
    with torch.no_grad():
        heads = model(x)
    # MONAI stacks main + auxiliary heads (upsampled to full size) on dim 1 in training.
    assert heads.shape == (1, 2, 2) + x.shape[2:]
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (1, 2) + x.shape[2:]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
class TwoLayerNet(nn.Module):
    """A user architecture, known to the registry only by the name a test registers."""

    def __init__(self, in_channels: int = 6, out_channels: int = 2, width: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, width, 3, padding=1)
        self.head = nn.Conv3d(width, out_channels, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def test_registry_builds_and_names_unknown_architectures():
    assert isinstance(build_architecture("unet3d", base_channels=2, depth=1), UNet3D)
    with pytest.raises(ValueError, match=r"unknown architecture 'unet2d'.*known architectures: .*unet3d"):
        build_architecture("unet2d")
    with pytest.raises(ValueError, match=r"cannot build architecture 'unet3d'.*width"):
        build_architecture("unet3d", width=3)
    with pytest.raises(ValueError, match="reserved"):
        register_architecture("unet3d", TwoLayerNet)
    with pytest.raises(ValueError, match="reserved"):
        register_architecture("monai.SegResNet", TwoLayerNet)
    with pytest.raises(ValueError, match="callable"):
        register_architecture("test.not-callable", 3)


def test_registered_architecture_can_be_built_once_registered():
    register_architecture("test.TwoLayerNet", TwoLayerNet)
    try:
        assert "test.TwoLayerNet" in available_architectures()
        assert isinstance(build_architecture("test.TwoLayerNet", width=2), TwoLayerNet)
        with pytest.raises(ValueError, match="already registered"):
            register_architecture("test.TwoLayerNet", TwoLayerNet)
        register_architecture("test.TwoLayerNet", UNet3D, overwrite=True)
        assert isinstance(build_architecture("test.TwoLayerNet", base_channels=2, depth=1), UNet3D)
    finally:
        unregister_architecture("test.TwoLayerNet")
    assert "test.TwoLayerNet" not in available_architectures()


def test_monai_names_listed_when_monai_installed():
    pytest.importorskip("monai")
    assert {"monai.UNet", "monai.BasicUNet", "monai.DynUNet"} <= set(available_architectures())
    with pytest.raises(ValueError, match=r"unknown architecture 'monai.HighResNet'.*MONAI architectures"):
        build_architecture("monai.HighResNet")


def test_library_works_without_monai(tmp_path):
    """In a fresh interpreter where `import monai` fails: models import, unet3d packages load, and
    asking for a MONAI network says how to install it."""
    package = make_package(tiny_model("unet3d")[0])
    package.save(tmp_path / "seed.lrpmodel")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["monai"] = None  # makes `import monai` raise ImportError
        from LRPSegmentationLib.models import available_architectures, build_architecture, load_package
        assert [n for n in available_architectures() if n not in ("nnunet.ensemble", "monai_bundle.network")] == ["unet3d"], available_architectures()
        try:
            build_architecture("monai.UNet")
        except ValueError as error:
            assert "pip install monai" in str(error), error
        else:
            raise AssertionError("monai.UNet was built without MONAI")
        load_package({str(tmp_path / "seed.lrpmodel")!r}).build()
        assert "monai" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --------------------------------------------------------------------------------------------
# Packages
# --------------------------------------------------------------------------------------------
def make_package(model: nn.Module, architecture: str = "unet3d", kwargs: dict | None = None,
                 **overrides) -> ModelPackage:
    arguments = dict(normalization={"type": "zscore", "mask": "foreground"}, class_names=["background", "tumour"],
                     class_colors=[(0, 0, 0), (1.0, 0.3, 0.2)], target_spacing=(1.5, 1.5, 3.0),
                     patch_size=(16, 32, 32), name="tiny", description="test net",
                     training_info={"dice": 0.81, "epochs": 3})
    arguments.update(overrides)
    return create_package(model, architecture, TINY["unet3d"][0] if kwargs is None else kwargs, SEQUENCES,
                          **arguments)


@pytest.fixture(scope="module")
def seed_case():
    return tiny_model("unet3d")


@pytest.fixture
def saved(tmp_path, seed_case):
    """A saved unet3d package: (folder, model, x)."""
    model, x, _ = seed_case
    folder = make_package(model).save(tmp_path / "tiny.lrpmodel")
    return folder, model, x


def edit_json(folder: Path, edit) -> None:
    meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    edit(meta)
    (folder / "model.json").write_text(json.dumps(meta, indent=2))


# Spatial sizes must be multiples of: 2**depth, prod(strides), 1 (BasicUNet pads), prod(strides).
@pytest.mark.parametrize("case, divisor", [("unet3d", 4), ("monai.UNet", 4), ("monai.BasicUNet", 1),
                                           ("monai.DynUNet", 4)])
def test_round_trip_gives_identical_logits(tmp_path, case, divisor):
    model, x, _ = tiny_model(case)
    architecture = case
    kwargs = dict(TINY[case][0], in_channels=6, out_channels=2)  # tuples here: stored as JSON lists
    package = make_package(model, architecture, kwargs, patch_size=tuple(2 * s for s in x.shape[2:]),
                           box_low=[-3.0] * 6, box_high=[4.0] * 6)
    loaded = load_package(package.save(tmp_path / "net.lrpmodel"))
    rebuilt = loaded.build()
    assert not rebuilt.training
    assert all(p.dtype == torch.float64 for p in rebuilt.parameters())  # the saved dtype
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert loaded.metadata() == package.metadata()
    assert loaded.architecture_kwargs == json.loads(json.dumps(kwargs))
    assert loaded.size_divisor == divisor


def test_build_casts_to_requested_dtype(saved):
    folder, model, x = saved
    rebuilt = load_package(folder).build(dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in rebuilt.parameters())
    with torch.no_grad():
        assert torch.allclose(rebuilt(x.float()).double(), model(x), rtol=1e-4, atol=1e-4)


def test_json_is_human_readable_and_complete(saved):
    folder, _, _ = saved
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "weights.safetensors"]
    text = (folder / "model.json").read_text(encoding="utf-8")
    assert len(text) < 10_000 and text.count("\n") > 40  # metadata only, one item per line
    assert '"reference_sequence": "T1-15min"' in text
    assert '"patch_size": [16, 32, 32]' in text        # short lists on one line
    meta = json.loads(text)
    assert meta["format_version"] == FORMAT_VERSION == 1
    assert [s["name"] for s in meta["input"]["sequences"]] == SEQUENCES
    # Normalizations are stored complete, defaults included.
    assert meta["input"]["sequences"][0]["normalization"] == {"type": "zscore", "mask": "foreground",
                                                              "foreground_threshold": "otsu"}
    assert meta["output"]["classes"] == [{"name": "background", "color": [0.0, 0.0, 0.0]},
                                         {"name": "tumour", "color": [1.0, 0.3, 0.2]}]
    assert meta["architecture"] == {"name": "unet3d", "kwargs": TINY["unet3d"][0]}
    assert meta["lrp"] == {"composite": "epsilon_gamma_box", "box_low": None, "box_high": None}
    assert meta["training_info"] == {"dice": 0.81, "epochs": 3}
    digest = hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()
    assert meta["weights"]["sha256"] == digest


def test_mismatched_weights_are_reported_by_key(saved):
    folder, _, _ = saved
    edit_json(folder, lambda m: m["architecture"]["kwargs"].update(base_channels=5))
    with pytest.raises(ValueError, match=r"do not match architecture 'unet3d'.*65 shape mismatch\(es\): "
                                         r"bottleneck\.0\.bias: weights \(16,\), architecture \(20,\); "
                                         r"bottleneck\.0\.weight: weights \(16, 8, 3, 3, 3\), architecture "
                                         r"\(20, 10, 3, 3, 3\)") as info:
        load_package(folder)
    assert "more)" in str(info.value)  # long lists are cut, with a count
    edit_json(folder, lambda m: m["architecture"]["kwargs"].update(base_channels=4, depth=1))
    with pytest.raises(ValueError, match=r"30 unexpected key\(s\): decoders\.1\.0\.bias; decoders\.1\.0\.weight"):
        load_package(folder)
    edit_json(folder, lambda m: m["architecture"]["kwargs"].update(depth=3))
    with pytest.raises(ValueError, match=r"missing key\(s\): decoders\.2\.0\.bias"):
        load_package(folder)
    # Without the shape check at load time, build() refuses the same way (not a torch traceback).
    package = load_package(folder, check=False)
    with pytest.raises(ValueError, match=r"missing key\(s\)"):
        package.build()


def test_create_package_refuses_what_could_not_be_loaded(seed_case):
    model = seed_case[0]
    with pytest.raises(ValueError, match="shape mismatch"):
        make_package(model, kwargs=dict(TINY["unet3d"][0], base_channels=8))
    with pytest.raises(ValueError, match=r"fails on an input of shape \(1, 6, 18, 32, 32\)"):
        make_package(model, patch_size=(18, 32, 32))  # not divisible by 2**depth
    with pytest.raises(ValueError, match=r"needs logits of shape \(1, 3, 16, 32, 32\).*3 classes"):
        make_package(model, class_names=["background", "tumour", "vessel"], class_colors=None)
    with pytest.raises(ValueError, match="must be a torch.nn.Module"):
        make_package(model.state_dict())


def test_check_inputs_names_what_differs(seed_case):
    package = make_package(seed_case[0])
    package.check_inputs(SEQUENCES)
    expected = r"expects \['T2', 'plainT1', 'T1-20s', 'T1-60s', 'T1-120s', 'T1-15min'\] in this order"
    with pytest.raises(ValueError, match=expected + r": missing \['T1-20s'\]$"):
        package.check_inputs([s for s in SEQUENCES if s != "T1-20s"])
    with pytest.raises(ValueError, match=r"missing \['T2'\]; unexpected \['T2w'\]"):
        package.check_inputs(["T2w"] + SEQUENCES[1:])
    with pytest.raises(ValueError, match=r"out of order: got \['plainT1', 'T2',"):
        package.check_inputs([SEQUENCES[1], SEQUENCES[0]] + SEQUENCES[2:])
    with pytest.raises(ValueError, match=r"given more than once \['T2'\]"):
        package.check_inputs(SEQUENCES + ["T2"])
    with pytest.raises(ValueError, match="not the string"):
        package.check_inputs("T2")


def test_save_never_overwrites_unless_asked(saved, seed_case):
    folder, _, _ = saved
    package = make_package(seed_case[0], description="second version")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        package.save(folder)
    assert load_package(folder).description == "test net"
    package.save(folder, overwrite=True)
    assert load_package(folder).description == "second version"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["tiny.lrpmodel"]  # no staging leftovers
    # A folder that is not a package is never replaced, even with overwrite=True.
    other = folder.parent / "notes.lrpmodel"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a model package"):
        package.save(other, overwrite=True)
    assert (other / "notes.txt").read_text(encoding="utf-8") == "keep me"
    with pytest.raises(ValueError, match=r"'<name>\.lrpmodel'"):
        package.save(folder.parent / "model.pt")


def test_loading_needs_only_the_registry(tmp_path):
    """A package of a user architecture loads by its registered name; unregistered, it cannot load
    (nothing named in the file is imported)."""
    register_architecture("test.TwoLayerNet", TwoLayerNet)
    try:
        torch.manual_seed(0)
        model = TwoLayerNet().double().eval()
        folder = create_package(model, "test.TwoLayerNet", {"width": 3}, SEQUENCES, normalization={"type": "none"},
                                class_names=["background", "tumour"], target_spacing=(1, 1, 1),
                                patch_size=(5, 7, 9)).save(tmp_path / "user.lrpmodel")
    finally:
        unregister_architecture("test.TwoLayerNet")
    with pytest.raises(ValueError, match=r"unknown architecture 'test.TwoLayerNet'.*register_architecture"):
        load_package(folder)
    # The user's builder may be any callable making the same structure, e.g. a function.
    register_architecture("test.TwoLayerNet", lambda width: TwoLayerNet(width=width))
    try:
        x = torch.randn(1, 6, 5, 7, 9, dtype=torch.float64)
        with torch.no_grad():
            assert torch.equal(load_package(folder).build()(x), model(x))
    finally:
        unregister_architecture("test.TwoLayerNet")


class _Payload:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_reading_never_unpickles(saved, tmp_path):
    folder, _, _ = saved
    marker = tmp_path / "code-ran"
    weights = folder / "weights.safetensors"
    weights.write_bytes(pickle.dumps({"encoders.0.0.weight": _Payload(marker)}))
    edit_json(folder, lambda m: m["weights"].update(sha256=hashlib.sha256(weights.read_bytes()).hexdigest()))
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        load_package(folder)
    assert not marker.exists()


def test_damaged_or_foreign_packages_are_refused(saved):
    folder, _, _ = saved
    weights = folder / "weights.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValueError, match="does not match the checksum"):
        load_package(folder)
    weights.write_bytes(original)
    edit_json(folder, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="format version 2.*update LRPSegmentation"):
        load_package(folder)
    edit_json(folder, lambda m: (m.update(format_version=FORMAT_VERSION), m["inference"].update(overlapp=0.5)))
    with pytest.raises(ValueError, match=r"'inference': missing key\(s\) \[\], unknown key\(s\) \['overlapp'\]"):
        load_package(folder)
    edit_json(folder, lambda m: (m["inference"].pop("overlapp"), m["weights"].update(file="../secret.bin")))
    with pytest.raises(ValueError, match="must be 'weights.safetensors'"):
        load_package(folder)
    edit_json(folder, lambda m: (m["weights"].update(file="weights.safetensors"),
                                 m["input"]["sequences"][2]["normalization"].update(type="minmax")))
    with pytest.raises(ValueError, match=r"normalization of sequence 'T1-20s': unknown normalization type 'minmax'"):
        load_package(folder)
    with pytest.raises(FileNotFoundError, match="no model package"):
        load_package(folder.parent / "absent.lrpmodel")
    (folder / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="model.json is missing"):
        load_package(folder)


@pytest.mark.parametrize("override, message", [
    ({"normalization": {"type": "zscore", "mask": "body"}}, "mask must be 'foreground' or 'none'"),
    ({"normalization": [{"type": "none"}] * 5}, "got 5 normalization methods for 6 sequences"),
    ({"normalization": {"T2": {"type": "none"}}}, r"missing \['plainT1',"),
    ({"reference_sequence": "T1"}, "reference_sequence 'T1' is not one of the sequences"),
    ({"class_names": ["background", "background"]}, r"class_names must be unique; repeated: \['background'\]"),
    ({"class_colors": [(0, 0, 0), (1.5, 0, 0)]}, "colour of class 'tumour' must be .* in 0..1"),
    ({"target_spacing": (1.5, 0.0, 3.0)}, "target_spacing .* must be positive"),
    ({"patch_size": (16, 32)}, r"patch_size must be three positive integers \(D, H, W\)"),
    ({"overlap": 1.0}, r"overlap must be in \[0, 1\)"),
    ({"composite": "gradient"}, "composite must be one of epsilon, epsilon_gamma_box"),
    ({"box_low": [0.0] * 5}, "box_low .* must be a list of 6 numbers"),
    ({"box_low": [0.0] * 6, "box_high": [1.0] * 5 + [0.0]}, r"box_low must be below box_high .*\['T1-15min'\]"),
    ({"training_info": {"dice": float("nan")}}, "training_info must hold only JSON values"),
])
def test_invalid_metadata_is_named(seed_case, override, message):
    with pytest.raises(ValueError, match=message):
        make_package(seed_case[0], **override)


def test_normalization_forms_and_defaults(seed_case):
    model = seed_case[0]
    single = make_package(model, normalization={"type": "percentile"})
    listed = make_package(model, normalization=[{"type": "percentile"}] * 6)
    by_name = make_package(model, normalization={s: {"type": "percentile"} for s in reversed(SEQUENCES)})
    assert single.normalization == listed.normalization == by_name.normalization
    assert single.normalization[0] == {"type": "percentile", "lower": 0.5, "upper": 99.5, "range": [0.0, 1.0],
                                       "mask": "none", "foreground_threshold": "otsu"}
    assert single.reference_sequence == "T1-15min"  # the last sequence unless given
    assert make_package(model, reference_sequence="T2").reference_sequence == "T2"


def test_package_box_bounds_reach_the_engine(seed_case):
    """The package's z^B bounds replace the input's range, and the region map stays exact."""
    model, x, _ = seed_case
    region = torch.zeros(x.shape[2:], dtype=torch.bool)
    region[3:5, 4, 4] = region[0, 0, 0] = True  # 3 voxels keep the per-voxel loop cheap
    package = make_package(model, box_low=[-4.0, -3.0, -5.0, -4.5, -4.0, -3.5], box_high=[4.0] * 6)
    composite = package.lrp_composite()
    assert torch.equal(composite.first.low, torch.tensor(package.box_low, dtype=torch.float64))
    result = explain_region(model, x, region, target=1, composite=composite, device="cpu")
    reference, _ = per_voxel_reference(model, x, region, 1, composite)
    assert float((result.relevance - reference).abs().max() / reference.abs().max()) <= 1e-5
    from_input_range = explain_region(model, x, region, target=1, composite=make_composite(package.composite),
                                      device="cpu")
    assert not torch.allclose(result.relevance, from_input_range.relevance)
