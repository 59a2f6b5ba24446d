"""The phantom's anatomy: where each tissue and lesion is, in physical millimetres.

:func:`LRPSegmentationLib.phantom.generate_case` draws a case in two steps: this module decides
the geometry (which voxel is fat, muscle, liver, vessel or lesion), and ``phantom`` renders the
six sequences from that tissue map and adds the acquisition effects. Nothing here knows about
intensities or sequences; the only contrast-table fact used is whether a lesion type has a rim.

What is drawn, each function taking the next draws of one anatomy random generator (so the call
order in ``generate_case`` is part of a seed's anatomy): a body outline with subcutaneous fat
(:func:`draw_body`), the IVC and aorta (:func:`draw_great_vessels`), a two-lobed dented liver
(:func:`draw_liver`), portal and hepatic vein trees (:func:`draw_hepatic_vessels`), and
non-touching irregular ellipsoidal lesions fully inside the liver (:func:`place_lesions`).

Conventions (as in ``phantom``): arrays are (D, H, W) = (z, y, x); millimetre coordinates are
(z, y, x) too, LPS with identity direction, and the volume is centred on the physical origin
(:class:`Grid`). ``scale`` shrinks the standard adult anatomy to fit a small field of view.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

__all__ = [
    "Grid",
    "Lesion",
    "draw_body",
    "draw_great_vessels",
    "draw_liver",
    "draw_hepatic_vessels",
    "place_lesions",
]

_LESION_MARGIN_MM = 2.0  # least liver tissue kept around a lesion, before the voxel-size minimums below


@dataclass
class Lesion:
    """One focal lesion of a :class:`~LRPSegmentationLib.phantom.PhantomCase`.

    Attributes:
        label: value of this lesion in ``PhantomCase.lesion_labels`` (1, 2, ...).
        lesion_type: a lesion key of the contrast table, e.g. ``"HCC"``.
        centre_voxel: (z, y, x) voxel index of the centre.
        radius_mm: nominal radius: the radius of the sphere with the volume of the lesion's
            ellipsoid before its surface dents; the surface reaches at most ``extent_mm``.
        extent_mm: largest distance from the centre to the lesion surface.
        volume_ml: volume of the drawn voxels.
    """

    label: int
    lesion_type: str
    centre_voxel: tuple[int, int, int]
    radius_mm: float
    extent_mm: float
    volume_ml: float


class Grid:
    """Voxel grid with centred physical coordinates in mm, as broadcastable 1-D axes."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=float)
        self.field_of_view_mm = tuple(n * s for n, s in zip(shape, spacing))
        self.axes_mm = [((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32)
                        for n, s in zip(shape, spacing)]
        self.everything = (slice(None), slice(None), slice(None))

    def box(self, low_mm: np.ndarray, high_mm: np.ndarray) -> tuple[slice, slice, slice]:
        """Index slices of the voxels whose centres may lie in the (z, y, x) mm box."""
        centre_index = (np.asarray(self.shape) - 1) / 2.0
        low = np.floor(np.asarray(low_mm) / self.spacing + centre_index).astype(int)
        high = np.ceil(np.asarray(high_mm) / self.spacing + centre_index).astype(int) + 1
        low = np.clip(low, 0, self.shape)
        high = np.clip(high, 0, self.shape)
        return tuple(slice(lo, hi) for lo, hi in zip(low, high))

    def coordinates(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, ...]:
        """Broadcastable (n, 1, 1), (1, n, 1), (1, 1, n) mm coordinates of a box."""
        z, y, x = (axis[part] for axis, part in zip(self.axes_mm, box))
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def voxel_to_mm(self, index: Sequence[float]) -> np.ndarray:
        return (np.asarray(index, dtype=float) - (np.asarray(self.shape) - 1) / 2.0) * self.spacing


def _random_dents(rng: np.random.Generator, amplitude: float, n_terms: int,
                  frequency: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random smooth function on the unit sphere, as cosine terms with total amplitude ≤ amplitude."""
    frequencies = rng.normal(0.0, frequency, size=(n_terms, 3))
    phases = rng.uniform(0.0, 2 * np.pi, size=n_terms)
    weights = rng.uniform(0.3, 1.0, size=n_terms)
    return frequencies, phases, (amplitude * weights / weights.sum())


def _dented_radius(u: np.ndarray, v: np.ndarray, w: np.ndarray,
                   dents: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius |(u, v, w)| and the dented surface radius 1 + f(direction) there."""
    radius = np.sqrt(u * u + v * v + w * w) + np.float32(1e-6)
    surface = np.ones_like(radius)
    for (fu, fv, fw), phase, amplitude in zip(*dents):
        surface += np.float32(amplitude) * np.cos((fu * u + fv * v + fw * w) / radius + phase)
    return radius, surface


def draw_body(grid: Grid, scale: float, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body outline, its inside below the subcutaneous fat, and where the liver may be.

    Returns:
        ``(body, inner_body, liver_allowed)``, each a (D, H, W) bool mask: inside the skin,
        inside the subcutaneous fat (muscle and viscera), and a further 6 mm (scaled) inside,
        which keeps the liver off the abdominal wall.
    """
    semi_x = rng.uniform(150.0, 170.0) * scale
    semi_y = rng.uniform(105.0, 118.0) * scale
    fat_mm = rng.uniform(8.0, 22.0) * scale
    waist = rng.uniform(-0.06, 0.06)  # the outline widens or narrows slightly along z
    outline = _random_dents(rng, 0.04, 3, 1.5)
    z, y, x = grid.coordinates(grid.everything)
    half_z = grid.field_of_view_mm[0] / 2.0
    widening = (1.0 + waist * z / half_z).astype(np.float32)  # (D, 1, 1)
    # The back is flatter than the belly: posterior (y > 0) semi-axis is shorter.
    semi_y_here = np.where(y > 0, 0.85 * semi_y, semi_y).astype(np.float32)  # (1, H, 1)
    radius_2d, surface_2d = _dented_radius(x / semi_x, y / semi_y_here, np.zeros_like(y + x), outline)
    in_plane = radius_2d / surface_2d  # (1, H, W): 1 on the skin
    body = in_plane <= widening

    def inside(margin_mm: float) -> np.ndarray:
        # Shrink the outline by an absolute margin: compare against a smaller normalised radius.
        return in_plane <= widening * (1.0 - margin_mm / (0.85 * semi_y))

    return body, inside(fat_mm), inside(fat_mm + 6.0 * scale)


def draw_great_vessels(grid: Grid, scale: float, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IVC (right of midline) and aorta (left) as vertical tubes in front of the spine.

    Returns:
        ``(ivc, aorta, ivc_yx)``: two (D, H, W) bool masks, and the IVC's in-plane (y, x)
        centre in mm, shape (2,), where the hepatic veins drain.
    """
    _, y, x = grid.coordinates(grid.everything)
    ivc_yx = np.array([45.0, -25.0]) * scale + rng.normal(0, 3.0, 2) * scale
    aorta_yx = np.array([55.0, 20.0]) * scale + rng.normal(0, 3.0, 2) * scale
    ivc_radius = rng.uniform(10.0, 13.0) * scale
    aorta_radius = rng.uniform(9.0, 12.0) * scale
    # The IVC is flattened front to back; both are straight along z.
    ivc_2d = ((y - ivc_yx[0]) / (0.75 * ivc_radius)) ** 2 + ((x - ivc_yx[1]) / ivc_radius) ** 2 <= 1
    aorta_2d = (y - aorta_yx[0]) ** 2 + (x - aorta_yx[1]) ** 2 <= aorta_radius ** 2
    full = np.ones((grid.shape[0], 1, 1), dtype=bool)
    return full & ivc_2d, full & aorta_2d, ivc_yx


def draw_liver(grid: Grid, scale: float, rng: np.random.Generator
               ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Liver as a smooth union of a large right lobe and a smaller anterior-medial left lobe.

    Returns:
        ``(liver, lobes)``: the (D, H, W) bool mask (not yet clipped to the body or the great
        vessels; the caller does that), and each lobe's (centre, semi-axes), both (3,) in mm,
        (z, y, x), right lobe first.
    """
    lobes = [  # (centre, semi-axes) of the standard anatomy, (z, y, x) mm
        (np.array([0.0, -8.0, -60.0]), np.array([55.0, 68.0, 62.0])),
        (np.array([12.0, -45.0, 15.0]), np.array([34.0, 34.0, 52.0])),
    ]
    lobes = [((centre + rng.normal(0.0, 5.0, 3)) * scale, axes * rng.uniform(0.9, 1.08, 3) * scale)
             for centre, axes in lobes]
    dent_amplitude = 0.15
    smoothing = 0.25  # of the smooth union below
    dents = [_random_dents(rng, dent_amplitude, 5, 2.0) for _ in lobes]
    # The smooth union reaches at most smoothing / 4 beyond either lobe's level set.
    reach = (1 + dent_amplitude) * (1 + smoothing / 4)
    low = np.min([c - a * reach for c, a in lobes], axis=0)
    high = np.max([c + a * reach for c, a in lobes], axis=0)
    box = grid.box(low, high)
    z, y, x = grid.coordinates(box)
    levels = []  # < 0 inside each lobe
    for (centre, axes), lobe_dents in zip(lobes, dents):
        radius, surface = _dented_radius((z - centre[0]) / axes[0], (y - centre[1]) / axes[1],
                                         (x - centre[2]) / axes[2], lobe_dents)
        levels.append(radius / surface - 1.0)
    # Polynomial smooth minimum: a union whose junction is a smooth saddle, not a crease.
    k = np.float32(smoothing)
    blend = np.clip(0.5 + 0.5 * (levels[1] - levels[0]) / k, 0.0, 1.0)
    union = levels[1] * (1 - blend) + levels[0] * blend - k * blend * (1 - blend)
    liver = np.zeros(grid.shape, dtype=bool)
    liver[box] = union <= 0
    return liver, lobes


def draw_hepatic_vessels(grid: Grid, scale: float,
                         lobes: list[tuple[np.ndarray, np.ndarray]],
                         ivc_yx: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
    """Portal vein tree from the hilum and hepatic vein tree converging on the IVC at the dome.

    Both are recursively bifurcating straight tubes; the caller clips them to the liver.

    Args:
        lobes: :func:`draw_liver`'s lobes, right lobe first (the trees start from them).
        ivc_yx: :func:`draw_great_vessels`'s IVC centre, where the hepatic veins converge.

    Returns:
        (D, H, W) bool mask of the vessel trees.
    """
    (right_centre, right_axes), (left_centre, _) = lobes
    segments: list[tuple[np.ndarray, np.ndarray, float]] = []
    # Portal vein: enters inferior-medially, splits into a right branch (lateral, cranial)
    # and a left branch (medial, anterior, toward the left lobe).
    hilum = right_centre + np.array([-0.3, 0.15, 0.4]) * right_axes
    portal_trunk = 7.0 * scale
    _grow_tree(hilum, np.array([0.3, -0.1, -1.0]), 0.5 * right_axes[2], portal_trunk, 3, rng, segments)
    _grow_tree(hilum, left_centre - hilum, 0.5 * np.linalg.norm(left_centre - hilum),
               0.8 * portal_trunk, 3, rng, segments)
    # Hepatic veins: right, middle and left, fanning inferiorly-anteriorly from the IVC.
    confluence = np.array([right_centre[0] + 0.55 * right_axes[0], *ivc_yx])
    for direction in ([-0.5, -0.3, -1.0], [-0.5, -1.0, 0.0], [-0.4, -0.8, 0.8]):
        _grow_tree(confluence, np.array(direction), 0.45 * right_axes[1], 6.0 * scale, 2, rng, segments)

    vessels = np.zeros(grid.shape, dtype=bool)
    for start, end, radius in segments:
        box = grid.box(np.minimum(start, end) - radius, np.maximum(start, end) + radius)
        if any(part.stop <= part.start for part in box):
            continue
        z, y, x = grid.coordinates(box)
        axis = end - start
        # Distance from each voxel centre to the segment: project, clamp to the ends.
        t = ((z - start[0]) * axis[0] + (y - start[1]) * axis[1] + (x - start[2]) * axis[2]) / axis.dot(axis)
        t = np.clip(t, 0.0, 1.0)
        distance_sq = ((z - start[0] - t * axis[0]) ** 2 + (y - start[1] - t * axis[1]) ** 2
                       + (x - start[2] - t * axis[2]) ** 2)
        vessels[box] |= distance_sq <= radius ** 2
    return vessels


def _grow_tree(start: np.ndarray, direction: np.ndarray, length: float, radius: float,
               depth: int, rng: np.random.Generator,
               segments: list[tuple[np.ndarray, np.ndarray, float]]) -> None:
    """Append a segment and, ``depth`` times over, two children branching to either side."""
    direction = np.asarray(direction, dtype=float)
    direction = direction / np.linalg.norm(direction)
    end = start + length * direction
    segments.append((start, end, radius))
    if depth == 0:
        return
    side = rng.normal(size=3)
    side -= side.dot(direction) * direction  # a random direction perpendicular to this branch
    side /= np.linalg.norm(side)
    for sign in (1.0, -1.0):
        angle = rng.uniform(0.35, 0.75)  # 20°–43° off the parent axis
        child = np.cos(angle) * direction + sign * np.sin(angle) * side
        _grow_tree(end, child, length * rng.uniform(0.65, 0.85), radius * 0.72, depth - 1,
                   rng, segments)


def place_lesions(grid: Grid, liver: np.ndarray, lesion_types: tuple[str, ...],
                  n_lesion_range: tuple[int, int], radius_range: tuple[float, float],
                  table: dict[str, tuple[float, ...]], tissue: np.ndarray,
                  code: dict[str, int], lesion_labels: np.ndarray,
                  rng: np.random.Generator) -> list[Lesion]:
    """Place non-touching irregular ellipsoids fully inside the liver; draw them into the maps.

    A lesion of extent e fits at voxel c when c lies at least e + edge_margin inside the liver
    (liver distance map) and at least e + e_k + gap from every placed lesion k. ``room`` holds,
    per voxel, the largest e + edge_margin that fits there.

    Args:
        liver: (D, H, W) bool liver mask.
        lesion_types, n_lesion_range, radius_range: as validated by ``phantom.generate_case``.
        table: the contrast table; only used to know which lesion types have a ``"<type>_rim"``.
        tissue: (D, H, W) int16 tissue map, written in place (lesion and rim codes).
        code: tissue name → index in ``tissue``.
        lesion_labels: (D, H, W) int16 map, written in place (each lesion's label).

    Returns:
        The placed lesions, in label order; at least one.

    Raises:
        ValueError: when not even one lesion of the smallest radius fits.
    """
    # The liver may be cut by the volume's first/last slices: treat outside the volume as
    # outside the liver so lesions are never truncated by the field of view.
    padded = np.pad(liver, 1)
    mask_image = sitk.GetImageFromArray(padded.astype(np.uint8))
    mask_image.SetSpacing(tuple(float(s) for s in grid.spacing[::-1]))
    depth_in_liver = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        mask_image, insideIsPositive=True, squaredDistance=False, useImageSpacing=True))
    room = depth_in_liver[1:-1, 1:-1, 1:-1].astype(np.float32)
    room[~liver] = -1.0
    # The distance map measures to boundary voxel centres, and a lesion voxel may lie up to half
    # a voxel diagonal past the continuous surface: that much edge margin keeps lesions inside.
    # Between lesions, more than a full voxel diagonal keeps them separate 26-connected
    # components, so connected-component analysis recovers each lesion.
    diagonal = float(np.linalg.norm(grid.spacing))
    edge_margin = max(_LESION_MARGIN_MM, 0.5 * diagonal)
    gap = max(_LESION_MARGIN_MM, 1.01 * diagonal)
    z, y, x = grid.coordinates(grid.everything)

    lesions: list[Lesion] = []
    target = int(rng.integers(n_lesion_range[0], n_lesion_range[1] + 1))
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    for label in range(1, target + 1):
        lesion_type = str(rng.choice(lesion_types))
        # Semi-axis factors with geometric mean 1, so radius_mm is the volume-equivalent radius.
        axis_factors = rng.uniform(0.8, 1.2, 3)
        axis_factors /= np.prod(axis_factors) ** (1.0 / 3.0)
        dent_amplitude = 0.08
        extent_factor = axis_factors.max() * (1.0 + dent_amplitude)
        radius = rng.uniform(*radius_range)
        largest = (room.max() - edge_margin) / extent_factor
        radius = min(radius, largest)
        if radius < radius_range[0]:
            break  # the liver is full
        extent = radius * extent_factor
        # min(): a radius shrunk to the largest that fits must still find its voxel despite rounding.
        candidates = np.flatnonzero(room >= min(extent + edge_margin, room.max()))
        centre_index = np.unravel_index(candidates[rng.integers(len(candidates))], grid.shape)
        centre_mm = grid.voxel_to_mm(centre_index)

        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        dents = _random_dents(rng, dent_amplitude, 4, 2.0)
        box = grid.box(centre_mm - extent, centre_mm + extent)
        bz, by, bx = grid.coordinates(box)
        offset = (bz - centre_mm[0], by - centre_mm[1], bx - centre_mm[2])
        # Coordinates in the lesion's own frame, normalised by its semi-axes.
        local = [sum(rotation[i, j] * offset[i] for i in range(3)) / (radius * axis_factors[j])
                 for j in range(3)]
        normalised_radius, surface = _dented_radius(*local, dents)
        inside = normalised_radius <= surface
        tissue_box = tissue[box]
        tissue_box[inside] = code[lesion_type]
        rim_key = f"{lesion_type}_rim"
        if rim_key in table:
            # Rim ~30 % of the radius, but at least 1.5 in-plane voxels so it is visible.
            rim_fraction = min(0.6, max(0.3, 1.5 * grid.spacing[1:].max() / radius))
            tissue_box[inside & (normalised_radius >= surface * (1.0 - rim_fraction))] = code[rim_key]
        lesion_labels[box][inside] = label
        lesions.append(Lesion(label=label, lesion_type=lesion_type,
                              centre_voxel=tuple(int(i) for i in centre_index),
                              radius_mm=float(radius), extent_mm=float(extent),
                              volume_ml=float(inside.sum()) * voxel_ml))
        # Keep the next lesions away from this one.
        distance = np.sqrt((z - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (x - centre_mm[2]) ** 2)
        np.minimum(room, distance - extent - (gap - edge_margin), out=room)

    if not lesions:
        raise ValueError(f"no lesion of radius >= {radius_range[0]} mm fits in this case's liver "
                         f"(deepest point {room.max():.1f} mm from its edge); lower "
                         f"lesion_radius_mm or use a larger shape/spacing")
    return lesions
