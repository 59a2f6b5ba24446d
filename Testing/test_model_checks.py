"""What the models and the engine refuse: absurd architectures, non-finite weights or logits, tensors
and devices without data, and the first-layer rule behind pass-through operations (issue #10)."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from LRPSegmentationLib.engine import (COMPOSITES, explain_region, make_composite, prepare_graph, resolve_device,
                                       sequence_composition, sliding_explain_region, sliding_sequence_composition,
                                       sliding_window_logits)
from LRPSegmentationLib.models import (UNet3D, build_architecture, create_package, load_package,
                                       register_architecture, unregister_architecture)
from lrp_models import seed_unet

SEQUENCES = ["T2", "plainT1", "T1-20s", "T1-60s", "T1-120s", "T1-15min"]
KWARGS = dict(in_channels=6, out_channels=2, base_channels=4, depth=2)


def make_package(model: nn.Module, kwargs: dict = KWARGS):
    return create_package(model, "unet3d", kwargs, SEQUENCES, normalization={"type": "none"},
                          class_names=["background", "tumour"], target_spacing=(1, 1, 1), patch_size=(8, 8, 8))


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    return make_package(UNet3D(**KWARGS).eval()).save(tmp_path / "tiny.lrpmodel")


def edit_json(folder: Path, edit) -> None:
    meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    edit(meta)
    (folder / "model.json").write_text(json.dumps(meta, indent=2))


# --------------------------------------------------------------------------------------------
# 1. Architecture parameters are bounded before anything is allocated
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"base_channels": -4}, r"base_channels must be an integer in \[1, 65536\], got -4"),
    ({"in_channels": -6}, r"in_channels must be an integer in \[1, 1024\], got -6"),
    ({"out_channels": 0}, r"out_channels must be an integer in \[1, 1024\], got 0"),
    ({"base_channels": 10 ** 6}, r"base_channels must be an integer in \[1, 65536\], got 1000000"),
    ({"depth": 50}, r"depth must be an integer in \[1, 8\], got 50"),
    ({"depth": 0}, r"depth must be an integer in \[1, 8\], got 0"),
    ({"base_channels": 4.5}, r"base_channels must be an integer in \[1, 65536\], got 4.5"),
    ({"depth": True}, r"depth must be an integer in \[1, 8\], got True"),
    ({"base_channels": 1024, "depth": 4}, r"unet3d.*would have \d\.\d+e\+10 parameters.*limit is 2e\+09"),
])
def test_absurd_unet3d_parameters_are_refused_at_load(saved, kwargs, message):
    edit_json(saved, lambda m: m["architecture"]["kwargs"].update(kwargs))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        load_package(saved)
    assert time.perf_counter() - start < 5.0  # nothing was allocated (68 s / 648 GB before)


def test_build_and_check_false_refuse_before_allocating(saved):
    """Even a package read without the shape check cannot allocate an absurd network."""
    package = load_package(saved)
    package.architecture_kwargs = dict(KWARGS, base_channels=1024, depth=4)
    with pytest.raises(ValueError, match="parameters"):
        package.build()
    with pytest.raises(ValueError, match=r"depth must be an integer in \[1, 8\]"):
        build_architecture("unet3d", depth=50)


def test_absurd_monai_parameters_are_refused():
    pytest.importorskip("monai")
    with pytest.raises(ValueError, match=r"monai\.UNet.*channels must be positive integers .*got \[16, -32, 64\]"):
        build_architecture("monai.UNet", channels=(16, -32, 64), strides=(2, 2))
    with pytest.raises(ValueError, match=r"monai\.BasicUNet.*features must be 6 positive integers"):
        build_architecture("monai.BasicUNet", features=(16, 16, 32, 64, 128, 10 ** 7))
    with pytest.raises(ValueError, match=r"monai\.DynUNet.*in_channels must be an integer in \[1, 1024\]"):
        build_architecture("monai.DynUNet", in_channels=-1)
    with pytest.raises(ValueError, match=r"monai\.UNet.*would have .* parameters"):
        build_architecture("monai.UNet", channels=(16, 4096, 65536), strides=(2, 2))


class WideNet(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv3d(6, width, 3, padding=1)
        self.head = nn.Conv3d(width, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def test_registered_architectures_are_sized_on_the_meta_device():
    register_architecture("test.WideNet", WideNet)
    try:
        start = time.perf_counter()
        with pytest.raises(ValueError, match=r"test\.WideNet.*would have 1\.\d+e\+10 parameters"):
            build_architecture("test.WideNet", width=10 ** 8)  # 65 GB of float32 if allocated
        assert time.perf_counter() - start < 5.0
        with pytest.raises(ValueError, match="cannot build architecture 'test.WideNet'.*negative dimension"):
            build_architecture("test.WideNet", width=-3)
        assert isinstance(build_architecture("test.WideNet", width=3), WideNet)
    finally:
        unregister_architecture("test.WideNet")
    from LRPSegmentationLib.models.limits import MAX_PARAMETERS
    assert MAX_PARAMETERS == 2_000_000_000


# --------------------------------------------------------------------------------------------
# 2. Non-finite weights and logits
# --------------------------------------------------------------------------------------------
def test_non_finite_weights_with_a_valid_checksum_are_refused(saved):
    from safetensors.torch import load_file, save_file

    weights = saved / "weights.safetensors"
    state = load_file(str(weights))
    state["encoders.0.0.weight"][0, 0, 0, 0, :2] = float("nan")
    state["head.bias"][1] = float("inf")
    save_file(state, str(weights))
    edit_json(saved, lambda m: m["weights"].update(sha256=hashlib.sha256(weights.read_bytes()).hexdigest()))
    with pytest.raises(ValueError, match=r"NaN/Inf in 2 tensor\(s\): encoders\.0\.0\.weight \(2 of 648 values\), "
                                         r"head\.bias \(1 of 2 values\)"):
        load_package(saved)
    with pytest.raises(ValueError, match=r"NaN/Inf in 1 tensor\(s\): head\.bias"):
        torch.manual_seed(0)
        model = UNet3D(**KWARGS).eval()
        with torch.no_grad():
            model.head.bias[0] = float("nan")
        make_package(model)


def test_build_refuses_weights_made_non_finite_after_loading(saved):
    package = load_package(saved)
    package.state_dict["head.weight"][0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN/Inf in 1 tensor\(s\): head\.weight"):
        package.build()


class OverflowNet(nn.Module):
    """Finite weights whose logits overflow to ±Inf (and Inf - Inf = NaN)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 2, 1).double()
        self.head = nn.Conv3d(2, 2, 1).double()
        with torch.no_grad():
            self.conv.weight.fill_(1e200)
            self.head.weight.fill_(1e200)

    def forward(self, x):
        return self.head(self.conv(x))


@pytest.fixture(scope="module")
def case():
    x = torch.randn(1, 3, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    region = torch.zeros(8, 8, 8, dtype=torch.bool)
    region[3:5, 3:5, 3:5] = True
    return seed_unet(), x, region


def test_non_finite_logits_are_never_explained(case):
    _, x, region = case
    model = OverflowNet().double().eval()
    message = r"the model's logits contain \d+ NaN/Inf values"
    with pytest.raises(ValueError, match=message):
        explain_region(model, x, region, device="cpu")
    with pytest.raises(ValueError, match=message):
        sequence_composition(model, x, device="cpu")
    with pytest.raises(ValueError, match=message):
        sliding_window_logits(model, x, 4, device="cpu")
    with pytest.raises(ValueError, match=message):
        sliding_explain_region(model, x, region, patch_size=4, device="cpu")
    with pytest.raises(ValueError, match=message):
        sliding_sequence_composition(model, x, patch_size=4, device="cpu")


def test_predict_refuses_non_finite_logits(case):
    from LRPSegmentationLib import pipeline

    _, x, _ = case
    torch.manual_seed(0)
    model = UNet3D(3, 2, 4, 2).double().eval()
    with torch.no_grad():
        model.head.weight.fill_(1e308)
        model.head.bias.fill_(1.7e308)  # finite, but the logits overflow
    package = create_package(model, "unet3d", dict(in_channels=3, out_channels=2, base_channels=4, depth=2),
                             SEQUENCES[:3], normalization={"type": "none"}, class_names=["background", "tumour"],
                             target_spacing=(1, 1, 1), patch_size=(8, 8, 8))
    with pytest.raises(ValueError, match=r"logits contain \d+ NaN/Inf values"):
        pipeline.predict(model, x, package, device="cpu")


# --------------------------------------------------------------------------------------------
# 3. Devices and tensors without data
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, message", [
    ("gpu", r"unknown device 'gpu'.*'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ("cuda:x", r"unknown device 'cuda:x'"),
    ("meta", r"device 'meta' holds no data.*'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (3.5, r"unknown device 3\.5"),
])
def test_unknown_devices_are_named(case, device, message):
    model, x, region = case
    with pytest.raises(ValueError, match=message):
        resolve_device(device)
    with pytest.raises(ValueError, match=message):
        explain_region(model, x, region, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
def test_cuda_without_cuda_is_refused(case, device):
    model, x, region = case
    with pytest.raises(ValueError, match=f"device {device} requested but CUDA is not available"):
        sequence_composition(model, x, device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_absent_cuda_index_is_refused():
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"cuda:{count} requested but this machine has {count} CUDA device"):
        resolve_device(f"cuda:{count}")


def test_tensors_on_the_meta_device_are_refused(case):
    model, x, region = case
    with pytest.raises(ValueError, match="x is on the meta device"):
        explain_region(model, x.to("meta"), region, device="cpu")
    with pytest.raises(ValueError, match="x is on the meta device"):
        sliding_window_logits(model, x.to("meta"), 4, device="cpu")
    with pytest.raises(ValueError, match="region is on the meta device"):
        explain_region(model, x, region.to("meta"), device="cpu")
    with torch.device("meta"):
        on_meta = UNet3D(3, 2, 4, 2).double().eval()
    with pytest.raises(ValueError, match="the model's weights are on the meta device"):
        explain_region(on_meta, x, region, device="cpu")
    with pytest.raises(ValueError, match="the model's weights are on the meta device"):
        sliding_sequence_composition(on_meta, x, patch_size=8, device="cpu")


# --------------------------------------------------------------------------------------------
# 4. The first-layer rule sees through pass-through operations
# --------------------------------------------------------------------------------------------
class Copies(nn.Module):
    """Copies, casts and no-op reshapes of the input before the network: values unchanged."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        y = x.clone().contiguous().to(torch.float64).reshape(x.shape)
        return self.net(y.view(1, *x.shape[1:]).detach())


@pytest.mark.parametrize("composite", COMPOSITES)
def test_pass_through_before_the_first_layer_changes_nothing(case, composite):
    """Eval dropouts, Identity, copies, casts and no-op reshapes in front of the first convolution
    leave the logits bit-identical, and so must they leave the explanation."""
    model, x, region = case
    wrapped = nn.Sequential(nn.Dropout3d(0.3), nn.Dropout(0.5), nn.Identity(), Copies(model)).eval()
    with torch.no_grad():
        assert torch.equal(wrapped(x), model(x))
    plain = explain_region(model, x, region, target=1, composite=composite, device="cpu")
    other = explain_region(wrapped, x, region, target=1, composite=composite, device="cpu")
    assert torch.equal(other.relevance, plain.relevance)
    assert torch.equal(other.sequence_shares, plain.sequence_shares)
    assert torch.equal(sequence_composition(wrapped, x, 1, composite, device="cpu"),
                       sequence_composition(model, x, 1, composite, device="cpu"))


@pytest.mark.parametrize("composite", COMPOSITES)
def test_first_layer_behind_dropout_matches_zennit(composite):
    pytest.importorskip("zennit")
    from test_zennit_parity import HIGH, LOW, close, zennit_composite, zennit_relevance

    model = nn.Sequential(nn.Dropout3d(0.3), seed_unet()).eval()
    x = torch.randn(1, 3, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 1.5
    x = x.clamp(LOW.view(1, -1, 1, 1, 1), HIGH.view(1, -1, 1, 1, 1))
    logits = model(x)
    r = torch.zeros_like(logits)
    r[:, 1, 2:6, 2:6, 3:5] = logits[:, 1, 2:6, 2:6, 3:5]
    ours = prepare_graph(model, x, make_composite(composite, low=LOW, high=HIGH)).relevance(r)
    assert close(ours, zennit_relevance(model, x, r, zennit_composite(composite)))


def test_an_activation_before_the_first_layer_is_not_a_pass_through(case):
    """ReLU changes the values the first layer sees: that layer keeps its own kind's rule."""
    model, x, _ = case
    graph = prepare_graph(nn.Sequential(nn.ReLU(), model).eval(), x, make_composite("epsilon_gamma_box"))
    first_conv = graph.layers[0]
    assert type(first_conv.rule).__name__ == "Gamma"
    graph = prepare_graph(nn.Sequential(nn.Dropout3d(0.3), model).eval(), x, make_composite("epsilon_gamma_box"))
    assert type(graph.layers[0].rule).__name__ == "ZBox"
