"""Usage: python Resources/Screenshots/render_screenshot.py SCREENSHOT.png THUMBNAIL.png

Render the extension's screenshot and the sample-data thumbnail from the demo case (run once).

Screenshot: the module's output as 3D Slicer shows it -- the reference sequence (T1-15min) with the
most relevant sequence's relevance map blended on top at the module's default opacity (0.5) in the
module's blue-white-red table (symmetric window around 0, shared by all maps), region A (the
predicted tumour) outlined, the colour legend, and the module's shares bar chart.
"""
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LinearSegmentedColormap


sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "LRPSegmentation"))
from LRPSegmentationLib import demo, phantom, pipeline  # noqa: E402
from LRPSegmentationLib.models.package import load_package  # noqa: E402
from LRPSegmentationLib.slicer import publish  # noqa: E402
from LRPSegmentationLib.vocabulary import DEMO_MODEL  # noqa: E402

OUT_SCREENSHOT = sys.argv[1]
OUT_THUMBNAIL = sys.argv[2]

package = load_package(DEMO_MODEL)
model = package.build().float().eval()
generated = phantom.generate_case(demo.DEMO_SEED, shape=(32, 96, 96))
case = demo.case_from_phantom(generated)
start = time.time()
result = pipeline.explain_case(case, model, package, regions=["predicted"], device="cpu")
print(f"explained in {time.time() - start:.0f} s", file=sys.stderr)
explanation = result.explanations["predicted"]
relevance = explanation.relevance.detach().cpu().numpy()
positive = explanation.positive_shares.detach().cpu().numpy()
shares = explanation.sequence_shares.detach().cpu().numpy()
names = list(case.sequences)
order = publish.relevance_order(positive)
strongest = order[0]
region = result.regions["predicted"]
reference = case.images[names.index(package.reference_sequence)]

# Axial slice through the region's largest cross-section.
k = int(np.argmax(region.sum(axis=(1, 2))))
# Slicer shows axial slices in radiological convention (patient right on screen left) with
# anterior up; the phantom's arrays are LPS (x toward patient left, y toward posterior), so the
# array's column 0 (patient right) is on the left and row 0 (anterior) on top: no flip needed.
gray = reference[k]
low, high = np.percentile(reference, [1, 99.5])
gray = np.clip((gray - low) / (high - low), 0, 1)
half = float(np.abs(relevance).max()) or 1.0
table = LinearSegmentedColormap.from_list("LRP relevance (blue-white-red)", [(0, 0, 1), (1, 1, 1), (1, 0, 0)], 256)
overlay = table((relevance[strongest, k] / half + 1) / 2)[..., :3]
blended = 0.5 * np.repeat(gray[..., None], 3, axis=-1) + 0.5 * overlay

fig = plt.figure(figsize=(12, 5.6), dpi=100, facecolor="#1f2430")
fig.text(0.015, 0.955, "LRP Segmentation", color="white", fontsize=16, weight="bold", va="center")
fig.text(0.215, 0.955, f"demo case (liver phantom, seed {demo.DEMO_SEED}) · region A = predicted tumour "
         f"({explanation.n_used} voxels) · composite {result.composite}", color="#c8cdd8", fontsize=11, va="center")

ax = fig.add_axes([0.015, 0.06, 0.40, 0.84])
ax.imshow(blended, interpolation="nearest", aspect=package.target_spacing[1] / package.target_spacing[0])
ax.contour(region[k], levels=[0.5], colors=["#ffe14d"], linewidths=1.6)
ax.set_xticks([])
ax.set_yticks([])
for spine in ax.spines.values():
    spine.set_color("#c0392b")
    spine.set_linewidth(3)
ax.text(0.02, 0.97, f"Red slice · T1-15min + relevance {names[strongest]} (opacity 0.5)", transform=ax.transAxes,
        color="white", fontsize=10, va="top", bbox=dict(facecolor="black", alpha=0.55, edgecolor="none"))
ax.text(0.02, 0.03, "yellow: region A", transform=ax.transAxes, color="#ffe14d", fontsize=10,
        bbox=dict(facecolor="black", alpha=0.55, edgecolor="none"))

legend = fig.add_axes([0.425, 0.16, 0.018, 0.64])
gradient = np.linspace(1, -1, 256)[:, None]
legend.imshow(gradient, cmap=table, aspect="auto", extent=[0, 1, -half, half])
legend.set_xticks([])
legend.yaxis.tick_right()
legend.tick_params(colors="white", labelsize=9)
legend.set_title("Relevance", color="white", fontsize=10)
for spine in legend.spines.values():
    spine.set_color("#888")

chart = fig.add_axes([0.555, 0.14, 0.425, 0.72], facecolor="white")
bars = chart.bar(range(len(names)), shares, color=(0.85, 0.2, 0.15))
chart.axhline(0, color="black", linewidth=0.8)
chart.set_xticks(range(len(names)), names, fontsize=10)
chart.set_title("Share of relevance per sequence", fontsize=12, color="white", pad=10)
chart.set_xlabel("Sequence", color="white")
chart.set_ylabel("Share of relevance", color="white")
chart.tick_params(axis="y", colors="white")
chart.tick_params(axis="x", colors="white")
for bar, value in zip(bars, shares):
    chart.text(bar.get_x() + bar.get_width() / 2, value + (0.01 if value >= 0 else -0.03), f"{100 * value:.0f} %",
               ha="center", va="bottom", fontsize=9)
chart.set_ylim(min(0.0, float(shares.min()) - 0.06), float(shares.max()) + 0.08)
fig.savefig(OUT_SCREENSHOT, facecolor=fig.get_facecolor())
print("shares", dict(zip(names, np.round(shares, 3))), "strongest", names[strongest], file=sys.stderr)

# Sample-data thumbnail (about the size the module template suggests): the phantom's T1-15min slice.
thumb = plt.figure(figsize=(2.6, 2.8), dpi=100, facecolor="black")
axis = thumb.add_axes([0, 0.1, 1, 0.9])
axis.imshow(gray, cmap="gray", interpolation="nearest")
axis.set_axis_off()
thumb.text(0.5, 0.05, "LRP liver phantom (6 MRI sequences)", color="white", fontsize=8, ha="center", va="center")
thumb.savefig(OUT_THUMBNAIL, facecolor="black")
