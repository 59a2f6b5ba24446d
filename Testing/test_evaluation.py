"""Faithfulness checks (LRPSegmentationLib.evaluation): metrics on known values, bad inputs, and the
proof on the shipped phantom models that the per-sequence shares are right."""
from pathlib import Path

import numpy as np
import pytest
import torch

from LRPSegmentationLib import evaluation as E
from LRPSegmentationLib.randomization import randomization_check
from LRPSegmentationLib import phantom, pipeline, training
from LRPSegmentationLib.demo import case_from_phantom, phantom_case
from LRPSegmentationLib.engine import explain_region, make_composite
from LRPSegmentationLib.models import load_package
from LRPSegmentationLib.models.unet3d import UNet3D

PROOF_FRACTION = 0.9  # the product's claim


# --------------------------------------------------------------------------------------------
# Metrics on known values
# --------------------------------------------------------------------------------------------
def test_dice_known_masks():
    a = np.zeros((2, 3, 4), bool)
    b = np.zeros((2, 3, 4), bool)
    assert E.dice(a, b) == 1.0  # both empty
    a[0, 0, :3] = True  # 3 voxels
    b[0, 0, 1:] = True  # 3 voxels, 2 shared
    assert E.dice(a, b) == pytest.approx(2 * 2 / 6)
    assert E.dice(torch.from_numpy(a), torch.from_numpy(a)) == 1.0
    assert E.dice(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        E.dice(a, b[0])


def test_rank_average_ties():
    np.testing.assert_allclose(E.rank([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])
    np.testing.assert_allclose(E.rank([3.0, 1.0, 2.0]), [3, 1, 2])


def test_spearman_known_values():
    assert E.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert E.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties, by hand: ranks a = [1, 2.5, 2.5, 4], b = [1, 2, 3, 4]; centred a = [-1.5, 0, 0, 1.5],
    # b = [-1.5, -.5, .5, 1.5]: Σab = 4.5, Σa² = 4.5, Σb² = 5  →  ρ = 4.5 / √22.5
    assert E.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(22.5))
    # classic textbook case without ties: 1 − 6Σd²/(n(n²−1)), d = [0, -1, 1, 0, 0] → 1 − 12/120
    assert E.spearman([1, 2, 3, 4, 5], [1, 3, 2, 4, 5]) == pytest.approx(0.9)
    # constant side: 0.0 by convention, never NaN
    assert E.spearman([1, 1, 1], [1, 2, 3]) == 0.0
    assert E.spearman([5.0], [3.0]) == 0.0
    with pytest.raises(ValueError, match="same length"):
        E.spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        E.spearman([1, np.nan], [1, 2])


def test_spearman_matches_pearson_of_ranks_random():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 50).astype(float)  # many ties
    b = a + rng.normal(0, 2, 50)
    ra, rb = E.rank(a), E.rank(b)
    assert E.spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1])


def test_shares_vs_ablation_and_curve_summaries():
    assert E.shares_vs_ablation([0.1, 0.5, 0.4], [0.0, 0.3, 0.2]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one per sequence"):
        E.shares_vs_ablation([0.1, 0.9], [0.1, 0.2, 0.3])
    morf = np.array([1.0, 0.2, 0.0])
    lerf = np.array([1.0, 1.0, 0.5])
    assert E.aopc(morf) == pytest.approx((0 + 0.8 + 1.0) / 3)
    assert E.area_between(morf, lerf) == pytest.approx(E.aopc(morf) - E.aopc(lerf))
    assert E.area_between(morf, lerf) > 0
    with pytest.raises(ValueError, match="lengths"):
        E.area_between(morf, lerf[:2])


def test_ablation_margin_on_a_linear_model():
    """Tumour logit 2·x0, background 0: removing x0 (mean -0.5 over the volume) turns the margin
    of the true positives from 2 to -1; x1 is not used at all."""
    model = torch.nn.Conv3d(2, 2, 1, bias=False).eval()
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1, 0] = 2.0
    x = -torch.ones(1, 2, 4, 4, 4)
    x[0, 0, :, :2, :2] = 1.0  # a quarter of the volume: mean of x0 = 0.25 - 0.75 = -0.5
    x[0, 1] = torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(0))
    truth = torch.zeros(4, 4, 4, dtype=torch.bool)
    truth[:, :2, :2] = True
    result = E.sequence_ablation(model, x, truth, device="cpu", mask=torch.ones(4, 4, 4, dtype=torch.bool))
    assert result.base_dice == 1.0 and result.base_margin == pytest.approx(2.0)
    assert result.ablated_margin == pytest.approx([-1.0, 2.0])
    assert result.margin_retained == pytest.approx([-0.5, 1.0])
    assert result.drops == pytest.approx([1.0, 0.0])


def test_uninformative_fill_modes():
    x = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 2, 3, 4)
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[0] = True
    filled = E.uninformative_fill(x, 1, mask=mask)
    assert torch.equal(filled[0, 0], x[0, 0])  # other sequences untouched
    assert torch.allclose(filled[0, 1], torch.full((2, 3, 4), float(x[0, 1][mask].mean())))
    assert torch.equal(x, torch.arange(48, dtype=torch.float32).reshape(1, 2, 2, 3, 4))  # input unchanged
    assert (E.uninformative_fill(x, 0, mode="zeros")[0, 0] == 0).all()
    noisy = E.uninformative_fill(x, 0, mask=mask, mode="noise", seed=3)
    assert torch.equal(noisy, E.uninformative_fill(x, 0, mask=mask, mode="noise", seed=3))
    assert noisy[0, 0].std() > 0
    assert E.uninformative_fill(x[0], 1, mask=mask).shape == x[0].shape  # (C, D, H, W) accepted
    with pytest.raises(ValueError, match="fill mode"):
        E.uninformative_fill(x, 0, mode="blur")
    with pytest.raises(ValueError, match="channel"):
        E.uninformative_fill(x, 2)
    with pytest.raises(ValueError, match="empty"):
        E.uninformative_fill(x, 0, mask=torch.zeros(2, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        E.uninformative_fill(x, 0, mask=torch.ones(2, 3, 5, dtype=torch.bool))


def test_perturbation_blocks_cover_the_neighbourhood():
    region = np.zeros((8, 16, 16), bool)
    region[3, 7, 8] = True
    blocks = E.perturbation_blocks(region.shape, region, patch=4, margin=0)
    assert blocks == [(slice(0, 4), slice(4, 8), slice(8, 12))]
    blocks = E.perturbation_blocks(region.shape, region, patch=(4, 4, 4), margin=(4, 4, 4))
    covered = np.zeros(region.shape, bool)
    for block in blocks:
        assert not covered[block].any()  # non-overlapping
        covered[block] = True
    assert covered[0:8, 3:12, 4:13].all() and len(blocks) == 2 * 3 * 3


# --------------------------------------------------------------------------------------------
# Bad inputs (an untrained model is enough)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    model = UNet3D(3, 2, base_channels=4, depth=1).eval()  # seed 0: every region voxel usable
    x = torch.randn(1, 3, 4, 8, 8)
    region = torch.zeros(4, 8, 8, dtype=torch.bool)
    region[1:3, 2:5, 2:5] = True
    return model, x, region


def test_bad_inputs(untrained):
    model, x, region = untrained
    relevance = torch.ones(x.shape[1:])
    with pytest.raises(ValueError, match=r"\(1, C, D, H, W\)"):
        E.sequence_ablation(model, x[0], region, device="cpu")
    with pytest.raises(ValueError, match="region_truth has shape"):
        E.sequence_ablation(model, x, region[:2], device="cpu")
    with pytest.raises(ValueError, match="fill mode"):
        E.sequence_ablation(model, x, region, fill="blur", device="cpu")
    with pytest.raises(ValueError, match="out of range"):
        E.sequence_ablation(model, x, region, target=5, device="cpu")
    with pytest.raises(ValueError, match="training mode"):
        E.sequence_ablation(UNet3D(3, 2, base_channels=2, depth=1), x, region, device="cpu")
    with pytest.raises(ValueError, match="empty"):
        E.region_perturbation(model, x, torch.zeros_like(region), relevance, device="cpu")
    with pytest.raises(ValueError, match="relevance has shape"):
        E.region_perturbation(model, x, region, relevance[:2], device="cpu")
    with pytest.raises(ValueError, match="order"):
        E.region_perturbation(model, x, region, relevance, order="best", device="cpu")
    with pytest.raises(ValueError, match="patch"):
        E.region_perturbation(model, x, region, relevance, patch=(2, 2), device="cpu")
    with pytest.raises(ValueError, match="steps"):
        E.region_perturbation(model, x, region, relevance, steps=0, device="cpu")
    with pytest.raises(ValueError, match="empty"):
        randomization_check(model, x, torch.zeros_like(region), 1, device="cpu")
    with pytest.raises(ValueError, match="layers"):
        randomization_check(model, x, region, 1, device="cpu", layers="bottom")


def test_perturbation_mechanics_untrained(untrained):
    model, x, region = untrained
    relevance = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(1))
    curve = E.region_perturbation(model, x, region, relevance, patch=2, steps=5, device="cpu")
    assert len(curve) == 6 and curve.fraction_removed[0] == 0 and curve.fraction_removed[-1] == 1
    assert ((curve.scores >= 0) & (curve.scores <= 1)).all()
    with torch.no_grad():
        p0 = torch.softmax(model(x), 1)[0, 1][region].mean()
    assert curve.scores[0] == pytest.approx(float(p0), rel=1e-5)
    lerf = E.region_perturbation(model, x, region, relevance, patch=2, steps=5, device="cpu", order="lerf")
    assert lerf.scores[-1] == pytest.approx(curve.scores[-1], rel=1e-5)  # everything removed in both
    logit = E.region_perturbation(model, x, region, relevance, patch=2, steps=5, device="cpu", score="logit",
                                  fill="mean")
    assert np.isfinite(logit.scores).all()


def test_randomization_leaves_the_model_alone(untrained):
    model, x, region = untrained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    result = randomization_check(model, x, region, 1, device="cpu", layers=2)
    assert len(result.stages) == 2 and len(result.stages[1].layers) > len(result.stages[0].layers)
    assert result.stages[0].layers[0] == "head"  # the cascade starts at the top
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(state, torch.random.get_rng_state())


# --------------------------------------------------------------------------------------------
# The proof on the shipped demo model (trained on the phantom; inference only here)
# --------------------------------------------------------------------------------------------
MODELS = Path(__file__).resolve().parents[1] / "LRPSegmentation" / "Resources" / "Models"
PROOF_SEEDS = (9000, 9001, 9002)  # never used in training (training.TEST_FIRST_SEED)


@pytest.fixture(scope="module")
def demo_cases():
    """The demo model on three fresh phantom cases: (model, x, truth, true-positive explanation)."""
    package = load_package(MODELS / "demo_unet3d.lrpmodel")
    model = package.build()
    cases = []
    for seed in PROOF_SEEDS:
        case = phantom_case(seed, tuple(package.training_info["phantom_shape"]))
        x = pipeline.network_input(case, package)
        _, labels = pipeline.predict(model, x, package, "cpu")
        truth = torch.from_numpy(case.reference_label.astype(bool))
        tp = torch.from_numpy(labels == 1) & truth
        cases.append((model, x, truth, explain_region(model, x, tp, 1, package.lrp_composite(), device="cpu")))
    return cases


def test_every_true_positive_voxel_has_evidence_to_explain(demo_cases):
    """The failure mode of a first demo model (93 % of tumour voxels decided by the head's bias)."""
    for _, _, _, explanation in demo_cases:
        assert explanation.n_excluded <= 0.01 * (explanation.n_used + explanation.n_excluded)


def test_shares_rank_correlate_with_sequence_ablation(demo_cases):
    """Replacing a sequence by an uninformative one lowers Dice; the shares rank like those drops.
    Measured (2-core CPU): per case 0.657, 0.714, 0.714; over the three cases 0.829."""
    shares, drops = [], []
    for model, x, truth, explanation in demo_cases:
        drops.append(E.sequence_ablation(model, x, truth, device="cpu").drops)
        shares.append(explanation.positive_shares.numpy())
        assert drops[-1].max() > 0.1  # some sequence matters
    rho = E.shares_vs_ablation(np.mean(shares, 0), np.mean(drops, 0))
    assert rho >= 0.7, (rho, np.mean(shares, 0), np.mean(drops, 0))


def test_most_relevant_first_removal_drops_faster_than_random(demo_cases):
    model, x, truth, explanation = demo_cases[1]
    region = truth & explanation.excluded.logical_not()
    curves = {order: E.region_perturbation(model, x, region, explanation.relevance, order=order, steps=10,
                                           patch=(4, 8, 8), device="cpu", seed=0)
              for order in ("morf", "random")}
    assert E.area_between(curves["morf"], curves["random"]) > 0.05


def test_randomized_model_gives_a_different_explanation(demo_cases):
    """Model-parameter randomization (Adebayo et al. 2018). Measured: rank correlation of the signed
    maps -0.07, per-sequence shares moved by 0.16 (half L1). The rank correlation of |R| stays high
    (0.92): both maps live on the same receptive field around the region, and the zeros outside it
    tie — so the signed maps and the shares are what this check compares."""
    model, x, truth, _ = demo_cases[0]
    result = randomization_check(model, x, truth, 1, "epsilon_gamma_box", device="cpu", layers="all")
    assert result.correlation_signed < 0.5
    assert result.shares_change > 0.05


VARIANT = MODELS / "variant_T2_T1-20s.lrpmodel"


@pytest.fixture(scope="module")
def variant_fractions():
    """Share of the true-positive region's positive relevance on the sequences that carry lesion
    contrast, for a model trained on the variant where only T2 and T1-20s show the lesions:
    {"box": with the default box bounds (each sequence's input range), "liver": with the first
    layer's box collapsed to the liver parenchyma's intensity (low = high = reference), so that
    relevance measures the input's deviation from liver tissue}."""
    package = load_package(VARIANT)
    sequences = package.training_info["contrast_sequences"]
    model = package.build()
    carrying = [phantom.SEQUENCES.index(s) for s in sequences]
    fractions = {"box": [], "liver": [], "plainT1_margin_kept": []}
    for seed in PROOF_SEEDS:
        generated = phantom.generate_case(seed, shape=tuple(package.training_info["phantom_shape"]),
                                          contrast=phantom.contrast_only_in(sequences))
        case = case_from_phantom(generated)
        x = pipeline.network_input(case, package)
        _, labels = pipeline.predict(model, x, package, "cpu")
        tp = torch.from_numpy((labels == 1) & case.reference_label.astype(bool))
        parenchyma = torch.from_numpy(generated.liver & ~generated.tumour & ~generated.vessels)
        liver = x[0][:, parenchyma].mean(1).double()
        for key, composite in (("box", package.lrp_composite()),
                               ("liver", make_composite(package.composite, low=liver, high=liver))):
            explanation = explain_region(model, x, tp, 1, composite, device="cpu")
            fractions[key].append(float(explanation.positive_shares[carrying].sum()))
        ablation = E.sequence_ablation(model, x, torch.from_numpy(case.reference_label.astype(bool)), device="cpu")
        fractions["plainT1_margin_kept"].append(float(ablation.margin_retained[phantom.SEQUENCES.index("plainT1")]))
    return fractions


def test_sequences_with_lesion_contrast_get_more_than_their_uniform_share(variant_fractions):
    """Measured (2-core CPU): 0.387, 0.424, 0.610 on {T2, T1-20s} against a uniform 2/6 = 0.333.
    plainT1, which shows the liver but not the lesions, takes 0.18-0.35: z^B credits (x - low)·w, so
    a sequence that is bright in the liver earns relevance although it carries no lesion contrast."""
    assert min(variant_fractions["box"]) > 2 / 6, variant_fractions


def test_a_liver_reference_moves_relevance_to_the_sequences_with_lesion_contrast(variant_fractions):
    """Measured (2-core CPU): 0.562, 0.731, 0.810 with the liver reference vs 0.387, 0.424, 0.610."""
    for liver, box in zip(variant_fractions["liver"], variant_fractions["box"]):
        assert liver > box + 0.1, variant_fractions


def test_the_variant_model_uses_plain_t1_as_context(variant_fractions):
    """The variant keeps the liver, vessels and body in every sequence, and its network uses them:
    replacing plain T1 by its mean leaves -98 %, -140 %, +51 % of the true positives' margin
    (measured), so the 18-35 % of relevance on plain T1 is faithful, not an error."""
    assert max(variant_fractions["plainT1_margin_kept"]) < 0.6, variant_fractions


CONTROL = MODELS / "control_T2_T1-20s.lrpmodel"


@pytest.fixture(scope="module")
def control_cases():
    """The information control (only T2 and T1-20s say anything about the lesions; the other four
    sequences come from unrelated cases): per proof seed, (explanation of the true positives,
    sequence ablation), and the indices of the informative sequences."""
    package = load_package(CONTROL)
    informative = package.training_info["information_only_in"]
    model = package.build()
    cases = []
    for seed in PROOF_SEEDS:
        generated = training.phantom_training_case(seed, tuple(package.training_info["phantom_shape"]),
                                                   information_only_in=informative)
        case = case_from_phantom(generated)
        x = pipeline.network_input(case, package)
        _, labels = pipeline.predict(model, x, package, "cpu")
        truth = torch.from_numpy(case.reference_label.astype(bool))
        tp = torch.from_numpy(labels == 1) & truth
        cases.append((explain_region(model, x, tp, 1, package.lrp_composite(), device="cpu"),
                      E.sequence_ablation(model, x, truth, device="cpu")))
    return [phantom.SEQUENCES.index(s) for s in informative], cases


def test_the_control_model_decides_from_the_informative_sequences_only(control_cases):
    """The control's ground truth, checked on the model: replacing any uninformative sequence by
    its mean keeps 97-106 % of the true positives' margin (measured); removing T2 or T1-20s takes
    the margin below half in every case (T1-20s: -132 %, -82 %; T2: -57 %)."""
    informative, cases = control_cases
    for _, ablation in cases:
        others = np.delete(ablation.margin_retained, informative)
        assert np.all((others > 0.9) & (others < 1.1)), ablation.margin_retained
        assert ablation.margin_retained[informative].min() < 0.5, ablation.margin_retained


def test_the_informative_sequences_get_the_largest_shares(control_cases):
    """Measured positive shares: T2 0.21/0.25/0.51, T1-20s 0.40/0.39/0.17; each uninformative
    sequence 0.06-0.14."""
    informative, cases = control_cases
    for explanation, _ in cases:
        shares = explanation.positive_shares.numpy()
        assert shares[informative].min() > np.delete(shares, informative).max(), shares
        assert explanation.n_excluded == 0


def test_the_cross_check_flags_the_distractor_relevance(control_cases):
    """T1-15min gets 11-14 % of the positive relevance with 99-100 % of the margin kept without it.
    On case 9002 T1-20s is flagged too, rightly: that decision rests on T2 alone (105 % of the
    margin kept without T1-20s), yet T1-20s gets 17 % of the relevance."""
    informative, cases = control_cases
    for explanation, ablation in cases:
        flagged = E.relevance_without_sensitivity(explanation.positive_shares, ablation.margin_retained)
        assert set(flagged) - set(informative), (flagged, explanation.positive_shares)
        assert all(ablation.margin_retained[c] >= 0.95 for c in flagged)
    with pytest.raises(ValueError, match="one per sequence"):
        E.relevance_without_sensitivity([0.5, 0.5], [1.0, 1.0, 1.0])


@pytest.mark.xfail(strict=True, reason="BLOCKED, a property LRP does not have: on the information control, whose "
                                      "decisions ignore the four uninformative sequences (margin kept 97-106 %), "
                                      "T2 + T1-20s get 61 / 65 / 68 % of the positive relevance; the rest is "
                                      "distractor relevance (README, 'the proof'). The decision shares (exact "
                                      "Shapley values) meet the claim: test_shapley.py, 98 / 98 / 99 %")
def test_ninety_percent_of_the_relevance_falls_on_the_informative_sequences(control_cases):
    informative, cases = control_cases
    fractions = [float(explanation.positive_shares[informative].sum()) for explanation, _ in cases]
    assert min(fractions) >= PROOF_FRACTION, fractions
