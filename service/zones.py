"""Per-stream zone sets: the robot's hazard polygon, the protective and warning
rings around it, and how far a segmented person's ground contact is from it.

Zones are drawn either in image pixels or in floor metres; in metres a
homography, fitted from at least four image<->floor point pairs, maps the
person's ground-contact pixels onto the floor. Everything here is numpy only
and vectorised (points x edges). Advisory geometry, not a safety function.

Pixel convention: continuous image coordinates, the image spans [0, W] x [0, H]
and mask pixel (row r, column c) has its centre at (c + 0.5, r + 0.5), the
convention of a browser canvas and of torchvision's boxes. Zone polygons and
homography image points are read in that convention.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

UNITS = ("pixels", "metres")
# Largest accepted condition number of the Hartley-normalised DLT system
# (s_1 / s_8, s_8 being the singular value just above the null space). To first
# order the relative error of H is up to this number times the relative error
# of the points; good layouts measure 3..100 (4 corners ~4, a 50:1 strip ~85, a
# grazing 5..40 m view ~20), one point 1 % of the spread off the line through
# three others ~200. Above 1e3 one pixel of noise on a 1000 px layout could
# move H by 100 %: H is then fitted to noise, so the layout is refused.
MAX_SYSTEM_CONDITION = 1e3
# Largest accepted condition number of the normalised H (both sides Hartley-
# normalised, so a sound map is near-isotropic: the views above measure 1..12).
# 1e4 means the floor is squashed 1e4:1, almost onto a line: a backstop.
MAX_HOMOGRAPHY_CONDITION = 1e4
# Three points count as collinear when one lies within this fraction of the
# point set's RMS radius from the line through the other two (1 %).
COLLINEAR_TOLERANCE = 1e-2
# Largest accepted reprojection error of the fitted homography, in floor units
# (metres in a ZoneSet): 5 cm. Pixel noise gives millimetres to a couple of
# centimetres; a mislabelled or swapped pair gives decimetres to metres.
REPROJECTION_TOLERANCE = 0.05
# Most vertices per polygon and most homography pairs, unless the caller says
# otherwise (``limits.max_zone_vertices``). The self-intersection and layout
# checks compare every pair (O(n^2) time and memory): 256 keeps one check to
# milliseconds, while a cell's hazard needs a few dozen points at most.
MAX_VERTICES = 256


class ZoneError(ValueError):
    """A zone specification problem, phrased for an HTTP 422 body; names the field."""


# ---------------------------------------------------------------- homography


def _points(value: Any, field: str, minimum: int = 1, maximum: int = MAX_VERTICES) -> np.ndarray:
    # counted before converting, so an oversized list costs nothing more
    if isinstance(value, (list, tuple)) and len(value) > maximum:
        raise ZoneError(f"{field} has {len(value)} points; at most {maximum} are accepted "
                        "(limits.max_zone_vertices)")
    try:
        points = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ZoneError(f"{field} must be a list of [x, y] points") from None
    if points.ndim != 2 or points.shape[1] != 2:
        raise ZoneError(f"{field} must be a list of [x, y] points")
    if len(points) < minimum:
        raise ZoneError(f"{field} needs at least {minimum} points (got {len(points)})")
    if len(points) > maximum:
        raise ZoneError(f"{field} has {len(points)} points; at most {maximum} are accepted "
                        "(limits.max_zone_vertices)")
    bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if bad.size:
        raise ZoneError(f"{field}[{bad[0]}] is not a finite point")
    return points


def _check_layout(points: np.ndarray, field: str) -> None:
    """Duplicates and collinearity, the layouts a homography cannot be fitted from."""
    radius = float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean()))
    gaps = np.linalg.norm(points[:, None] - points[None], axis=-1)
    i, j = np.nonzero(np.triu(gaps <= 1e-9 * max(radius, 1e-300), k=1))
    if i.size:
        raise ZoneError(f"{field}[{i[0]}] and {field}[{j[0]}] are the same point")
    centred = (points - points.mean(axis=0)) / radius
    if np.linalg.svd(centred, compute_uv=False)[-1] / math.sqrt(len(points)) < COLLINEAR_TOLERANCE:
        raise ZoneError(f"{field}: the points are (nearly) collinear; a homography needs a 2-D layout")
    if len(points) == 4:  # the minimal case: any three on a line leaves H undetermined
        for skip in range(4):
            a, b, c = (centred[k] for k in range(4) if k != skip)
            ab = b - a
            offset = abs(ab[0] * (c - a)[1] - ab[1] * (c - a)[0]) / np.linalg.norm(ab)
            if offset < COLLINEAR_TOLERANCE:
                names = ", ".join(f"{field}[{k}]" for k in range(4) if k != skip)
                raise ZoneError(f"{names} are (nearly) collinear; with 4 pairs no three may be")


def _normaliser(points: np.ndarray) -> np.ndarray:
    """Hartley normalisation: centroid to the origin, mean distance sqrt(2)."""
    centre = points.mean(axis=0)
    scale = math.sqrt(2.0) / np.linalg.norm(points - centre, axis=1).mean()
    return np.array([[scale, 0.0, -scale * centre[0]], [0.0, scale, -scale * centre[1]], [0.0, 0.0, 1.0]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    homogeneous = points @ matrix[:, :2].T + matrix[:, 2]
    return homogeneous[:, :2], homogeneous[:, 2]


def homography(image_points: Any, floor_points: Any, tolerance: float = REPROJECTION_TOLERANCE,
               max_points: int = MAX_VERTICES) -> np.ndarray:
    """The 3x3 H with floor ~ H @ [x, y, 1], by the normalised DLT (Hartley &
    Zisserman, Alg. 4.2): both point sets normalised, A h = 0 solved by SVD, H
    denormalised. Scaled so H[2, 2] = 1 where the image origin is in front of
    the horizon (else to unit norm), with the calibration points at w > 0.

    Raises ZoneError for fewer than 4 or mismatched pairs, non-finite values,
    duplicate points, collinear layouts, an ill-conditioned system or H (see
    MAX_SYSTEM_CONDITION, MAX_HOMOGRAPHY_CONDITION), points on both sides of the
    horizon, or a max reprojection error above ``tolerance`` (floor units).
    """
    image = _points(image_points, "homography.image", maximum=max_points)
    floor = _points(floor_points, "homography.floor", maximum=max_points)
    if len(image) != len(floor):
        raise ZoneError(f"homography: {len(image)} image points but {len(floor)} floor points; they must pair up")
    if len(image) < 4:
        raise ZoneError(f"homography: needs at least 4 point pairs (got {len(image)})")
    _check_layout(image, "homography.image")
    _check_layout(floor, "homography.floor")

    t_image, t_floor = _normaliser(image), _normaliser(floor)
    (x, y), (u, v) = _apply(t_image, image)[0].T, _apply(t_floor, floor)[0].T
    zeros, ones = np.zeros_like(x), np.ones_like(x)
    system = np.concatenate([
        np.stack([-x, -y, -ones, zeros, zeros, zeros, u * x, u * y, u], axis=1),
        np.stack([zeros, zeros, zeros, -x, -y, -ones, v * x, v * y, v], axis=1),
    ])
    _, singular, vt = np.linalg.svd(system)
    condition = singular[0] / max(singular[7], 1e-300)
    if condition > MAX_SYSTEM_CONDITION:
        raise ZoneError(f"homography: the point layout is degenerate (normalised system condition number "
                        f"{condition:.3g} > {MAX_SYSTEM_CONDITION:g})")
    normalised = vt[-1].reshape(3, 3)
    h_condition = np.linalg.cond(normalised)
    if not np.isfinite(h_condition) or h_condition > MAX_HOMOGRAPHY_CONDITION:
        raise ZoneError(f"homography: the fitted map is near-singular (condition number {h_condition:.3g} > "
                        f"{MAX_HOMOGRAPHY_CONDITION:g})")
    matrix = np.linalg.solve(t_floor, normalised @ t_image)

    w = _apply(matrix, image)[1]
    if not ((w > 0).all() or (w < 0).all()):
        raise ZoneError("homography: the image points lie on both sides of the horizon; check the pairs")
    matrix = matrix * np.sign(w[0])
    scale = matrix[2, 2] if matrix[2, 2] > 1e-12 * np.linalg.norm(matrix) else np.linalg.norm(matrix)
    matrix = matrix / scale

    errors = np.linalg.norm(project(matrix, image) - floor, axis=1)
    worst = int(np.argmax(errors))
    if not errors[worst] <= tolerance:
        raise ZoneError(f"homography: pair {worst} reprojects {errors[worst]:.3g} from its floor point "
                        f"(tolerance {tolerance:g}); check homography.image[{worst}] and homography.floor[{worst}]")
    return matrix


def project(matrix: np.ndarray, points: Any) -> np.ndarray:
    """Image points [N, 2] to the floor [N, 2]; NaN for points at or beyond the
    horizon (w <= 0 with ``homography``'s sign convention): they are not on the floor."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    xy, w = _apply(np.asarray(matrix, dtype=np.float64), points)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0)[:, None], xy / w[:, None], np.nan)


# ------------------------------------------------------------------ polygons


def _edges(polygon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return polygon, np.roll(polygon, -1, axis=0)


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (b[..., 0] - o[..., 0])


def _segments_touch(a, b, c, d, eps: float, slack: float) -> np.ndarray:
    """Closed segments ab and cd share a point (broadcast over leading axes);
    ``eps`` is the tolerance on cross products, ``slack`` on coordinates."""
    d1, d2, d3, d4 = _cross(a, b, c), _cross(a, b, d), _cross(c, d, a), _cross(c, d, b)
    proper = (((d1 > eps) & (d2 < -eps)) | ((d1 < -eps) & (d2 > eps))) & \
             (((d3 > eps) & (d4 < -eps)) | ((d3 < -eps) & (d4 > eps)))

    def on(p, q, r, side):  # r on segment pq, given r is collinear with it
        lo, hi = np.minimum(p, q), np.maximum(p, q)
        return (np.abs(side) <= eps) & ((r >= lo - slack) & (r <= hi + slack)).all(axis=-1)

    return proper | on(a, b, c, d1) | on(a, b, d, d2) | on(c, d, a, d3) | on(c, d, b, d4)


def validate_polygon(value: Any, field: str, max_vertices: int = MAX_VERTICES) -> np.ndarray:
    """A simple polygon [M, 2] (closed implicitly, 3 <= M <= ``max_vertices``),
    or ZoneError naming ``field``."""
    polygon = _points(value, field, minimum=3, maximum=max_vertices)
    start, end = _edges(polygon)
    repeated = np.flatnonzero((start == end).all(axis=1))
    if repeated.size:
        k = repeated[0]
        raise ZoneError(f"{field}: vertices {k} and {(k + 1) % len(polygon)} repeat the same point")
    extent = float(np.ptp(polygon, axis=0).max())
    eps, slack = 1e-12 * extent * extent, 1e-12 * extent
    spread = np.linalg.svd(polygon - polygon.mean(axis=0), compute_uv=False)
    if spread[-1] <= 1e-9 * spread[0]:
        raise ZoneError(f"{field}: degenerate polygon with zero area (all vertices on one line)")
    count = len(polygon)
    i, j = np.triu_indices(count, k=2)
    keep = ~((i == 0) & (j == count - 1))  # the last edge is adjacent to the first
    i, j = i[keep], j[keep]
    hits = np.flatnonzero(_segments_touch(start[i], end[i], start[j], end[j], eps, slack))
    if hits.size:
        a, b = i[hits[0]], j[hits[0]]
        raise ZoneError(f"{field}: self-intersecting polygon, edge {a} ({a}->{(a + 1) % count}) intersects "
                        f"edge {b} ({b}->{(b + 1) % count})")
    return polygon


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over points x edges: bool [N]."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    start, end = _edges(polygon)
    px, py = points[:, :1], points[:, 1:]
    straddles = (start[:, 1] > py) != (end[:, 1] > py)
    dy = np.where(end[:, 1] == start[:, 1], 1.0, end[:, 1] - start[:, 1])
    crossing_x = start[:, 0] + (py - start[:, 1]) * (end[:, 0] - start[:, 0]) / dy
    return (straddles & (px < crossing_x)).sum(axis=1) % 2 == 1


def distance_to_boundary(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Euclidean distance of each point to the nearest polygon edge, [N]."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    start, end = _edges(polygon)
    direction = end - start
    offset = points[:, None, :] - start[None]
    t = np.clip((offset * direction).sum(-1) / (direction * direction).sum(-1), 0.0, 1.0)
    return np.linalg.norm(offset - t[..., None] * direction, axis=-1).min(axis=1)


def distance_to_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Distance of each point to the polygon as a filled region: 0 inside, [N]."""
    return np.where(points_in_polygon(points, polygon), 0.0, distance_to_boundary(points, polygon))


def _polygon_gap(inner: np.ndarray, outer: np.ndarray) -> float:
    """Smallest distance between the two boundaries (0 where they touch or cross)."""
    s, e = _edges(inner)
    t, f = _edges(outer)
    if _segments_touch(s[:, None], e[:, None], t[None], f[None], 0.0, 0.0).any():
        return 0.0
    return float(min(distance_to_boundary(inner, outer).min(), distance_to_boundary(outer, inner).min()))


def ground_points(mask: Any) -> np.ndarray:
    """The lowest mask pixel of every column that has one, as pixel centres
    (c + 0.5, r + 0.5) in image pixels, [K, 2], in column order."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    columns = np.flatnonzero(mask.any(axis=0))
    if not columns.size:
        return np.zeros((0, 2))
    rows = mask.shape[0] - 1 - np.argmax(mask[::-1, columns], axis=0)
    return np.stack([columns + 0.5, rows + 0.5], axis=1).astype(np.float64)


# ------------------------------------------------------------------ zone set


@dataclass(frozen=True)
class Ring:
    """A zone around the hazard: a polygon, or every point within ``distance`` of it."""

    polygon: np.ndarray | None = None
    distance: float | None = None

    def contains(self, points: np.ndarray, hazard_distance: np.ndarray) -> bool:
        if self.polygon is not None:  # the boundary counts as inside
            return bool((distance_to_polygon(points, self.polygon) <= 0.0).any())
        return bool((hazard_distance <= self.distance).any())

    def to_dict(self) -> dict:
        if self.polygon is not None:
            return {"polygon": self.polygon.tolist()}
        return {"distance": self.distance}


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ZoneError(f"{field} must be a finite number")
    return float(value)


def _keys(value: Any, field: str, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise ZoneError(f"{field} must be an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        where = f"{field}: " if field != "spec" else ""
        raise ZoneError(f"{where}unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return value


def _ring(value: Any, field: str, max_vertices: int) -> Ring:
    value = _keys(value, field, {"polygon", "distance"})
    if len(value) != 1:
        raise ZoneError(f"{field} must have exactly one of 'polygon' or 'distance'")
    if "polygon" in value:
        return Ring(polygon=validate_polygon(value["polygon"], f"{field}.polygon", max_vertices))
    distance = _number(value["distance"], f"{field}.distance")
    if distance <= 0:
        raise ZoneError(f"{field}.distance must be > 0 (got {distance:g})")
    return Ring(distance=distance)


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    if isinstance(value, float):
        return round(value, 6) + 0.0  # + 0.0 folds -0.0 into 0.0
    return value


class ZoneSet:
    """One stream's zones. Build with ``ZoneSet.from_spec``; ``person(mask)``
    measures a person against them."""

    def __init__(self, units: str, hazard: np.ndarray, protective: Ring | None = None,
                 warning: Ring | None = None, matrix: np.ndarray | None = None,
                 calibration: dict | None = None) -> None:
        self.units, self.hazard, self.protective, self.warning = units, hazard, protective, warning
        self.matrix, self._calibration = matrix, calibration
        self._check_nesting()
        canonical = json.dumps(_canonical(self.to_dict()), sort_keys=True, separators=(",", ":"))
        self.crc = zlib.crc32(canonical.encode("utf-8"))
        self.crc_hex = f"{self.crc:08x}"

    @classmethod
    def from_spec(cls, spec: Any, max_vertices: int = MAX_VERTICES) -> ZoneSet:
        """Validate ``spec``; every polygon and the homography hold at most
        ``max_vertices`` points, which bounds the O(n^2) checks."""
        spec = _keys(spec, "spec", {"units", "homography", "hazard", "protective", "warning"})
        units = spec.get("units")
        if units not in UNITS:
            raise ZoneError("units must be 'pixels' or 'metres'")
        matrix = calibration = None
        if units == "metres":
            if "homography" not in spec:
                raise ZoneError("homography is required when units is 'metres'")
            pairs = _keys(spec["homography"], "homography", {"image", "floor"})
            for name in ("image", "floor"):
                if name not in pairs:
                    raise ZoneError(f"homography.{name} is required")
            matrix = homography(pairs["image"], pairs["floor"], max_points=max_vertices)
            calibration = {name: _points(pairs[name], f"homography.{name}", maximum=max_vertices).tolist()
                           for name in ("image", "floor")}
        elif "homography" in spec:
            raise ZoneError("homography is only allowed when units is 'metres'")
        if "hazard" not in spec:
            raise ZoneError("hazard is required")
        hazard = validate_polygon(spec["hazard"], "hazard", max_vertices)
        protective = _ring(spec["protective"], "protective", max_vertices) if "protective" in spec else None
        warning = _ring(spec["warning"], "warning", max_vertices) if "warning" in spec else None
        return cls(units, hazard, protective, warning, matrix, calibration)

    def _check_nesting(self) -> None:
        """Each ring must enclose the zone inside it, else 'innermost zone' means nothing."""
        # what the next ring must enclose: the innermost polygon and, if the
        # previous ring is a distance, that ring's field and reach
        polygon_name, polygon, reach_name, reach = "hazard", self.hazard, None, 0.0
        for name, ring in (("protective", self.protective), ("warning", self.warning)):
            if ring is None:
                continue
            if ring.distance is not None:
                if reach_name is not None and ring.distance <= reach:
                    raise ZoneError(f"{name}.distance must be > {reach_name} ({ring.distance:g} <= {reach:g})")
                if polygon is not self.hazard:
                    # its vertices must be within reach: exact for a convex
                    # hazard, a necessary condition for a concave one
                    farthest = float(distance_to_polygon(polygon, self.hazard).max())
                    if farthest > ring.distance:
                        raise ZoneError(f"{name}.distance must reach past {polygon_name} "
                                        f"(one of its vertices is {farthest:g} from the hazard)")
                polygon_name, polygon, reach_name, reach = "hazard", self.hazard, f"{name}.distance", ring.distance
            else:
                field = f"{name}.polygon"
                enclosed = bool(points_in_polygon(polygon, ring.polygon).all())
                gap = _polygon_gap(polygon, ring.polygon) if enclosed else 0.0
                if gap <= 0.0:
                    raise ZoneError(f"{field} must enclose {polygon_name} without touching it")
                if reach_name is not None and gap <= reach:
                    raise ZoneError(f"{field} must lie beyond {reach_name} (it comes within {gap:g} of the hazard)")
                polygon_name, polygon, reach_name, reach = field, ring.polygon, None, 0.0

    def to_dict(self) -> dict:
        """The normalised spec (what the CRC covers)."""
        spec: dict[str, Any] = {"units": self.units, "hazard": self.hazard.tolist()}
        if self._calibration is not None:
            spec["homography"] = {key: [list(p) for p in value] for key, value in self._calibration.items()}
        for name, ring in (("protective", self.protective), ("warning", self.warning)):
            if ring is not None:
                spec[name] = ring.to_dict()
        return spec

    def person(self, mask: Any) -> dict | None:
        """Distance and zone of one person mask; None for an empty mask.

        ``distance`` is the smallest distance from a ground point (projected to
        the floor in metres mode) to the hazard polygon, 0 inside it. Ground
        points beyond the calibrated horizon are not on the floor and are left
        out; if none is left, ``distance`` is NaN and ``zone`` None, which the
        caller must treat as unknown (FAULT), never as clear.
        """
        pixels = ground_points(mask)
        if not len(pixels):
            return None
        points = pixels if self.matrix is None else project(self.matrix, pixels)
        on_floor = np.isfinite(points).all(axis=1)
        if not on_floor.any():
            return {"distance": math.nan, "units": self.units, "zone": None,
                    "ground_point": pixels[int(np.argmax(pixels[:, 1]))].tolist()}
        pixels, points = pixels[on_floor], points[on_floor]
        distances = distance_to_polygon(points, self.hazard)
        closest = int(np.argmin(distances))
        zone = None
        if distances[closest] <= 0.0:
            zone = "hazard"
        elif self.protective is not None and self.protective.contains(points, distances):
            zone = "protective"
        elif self.warning is not None and self.warning.contains(points, distances):
            zone = "warning"
        return {"distance": float(distances[closest]), "units": self.units, "zone": zone,
                "ground_point": pixels[closest].tolist()}
