"""service.zones: the homography fit against a known H, polygon validation, distances
against hand-computed values and a plain-Python reference, ground points of synthetic
masks, zone classification, the spec's validation messages and its CRC."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from service.zones import (ZoneError, ZoneSet, distance_to_polygon, ground_points, homography, points_in_polygon,
                           project, validate_polygon)

# pixels -> floor metres: a camera looking down at the floor at an angle
TRUE_H = np.array([[0.01, 0.002, -1.0], [0.0005, 0.02, -2.0], [0.0001, 0.0008, 1.0]])
CORNERS = [[100.0, 400.0], [600.0, 420.0], [650.0, 700.0], [80.0, 690.0]]
L_SHAPE = [[0, 0], [6, 0], [6, 2], [2, 2], [2, 6], [0, 6]]  # concave
SQUARE = [[100, 100], [200, 100], [200, 200], [100, 200]]


def _floor(points):
    points = np.asarray(points, float)
    homogeneous = np.c_[points, np.ones(len(points))] @ TRUE_H.T
    return homogeneous[:, :2] / homogeneous[:, 2:]


def _bar(column, bottom_row, top_row=0, shape=(500, 500)):
    """A one-column person mask whose lowest pixel is (bottom_row, column)."""
    mask = np.zeros(shape, bool)
    mask[top_row:bottom_row + 1, column] = True
    return mask


# ---------------------------------------------------------------- homography


def test_homography_recovers_known_h_from_four_points():
    fitted = homography(CORNERS, _floor(CORNERS))
    np.testing.assert_allclose(fitted / fitted[2, 2], TRUE_H / TRUE_H[2, 2], rtol=1e-9, atol=1e-12)
    probe = [[300.0, 500.0], [640.0, 360.0]]
    np.testing.assert_allclose(project(fitted, probe), _floor(probe), atol=1e-9)


def test_homography_from_eight_noisy_points():
    rng = np.random.default_rng(0)
    image = rng.uniform([0, 300], [1280, 720], (8, 2))
    floor = _floor(image)
    noisy = image + rng.normal(0, 0.3, image.shape)  # 0.3 px of clicking noise
    fitted = homography(noisy, floor)
    reprojection = np.linalg.norm(project(fitted, noisy) - floor, axis=1)
    assert reprojection.max() < 0.01  # metres; the noise is ~7 mm/px * 0.3 px
    probe = rng.uniform([0, 300], [1280, 720], (20, 2))
    assert np.linalg.norm(project(fitted, probe) - _floor(probe), axis=1).max() < 0.02


@pytest.mark.parametrize("image, floor, message", [
    (CORNERS[:3], _floor(CORNERS[:3]), r"homography: needs at least 4 point pairs \(got 3\)"),
    (CORNERS + [[300, 500]], _floor(CORNERS), "5 image points but 4 floor points"),
    ([[0, 400], [100, 400], [200, 400], [50, 600]], _floor([[0, 400], [100, 400], [200, 400], [50, 600]]),
     r"homography.image\[0\], homography.image\[1\], homography.image\[2\] are \(nearly\) collinear"),
    ([[0, 400], [100, 400], [200, 400], [300, 400], [400, 400.5]],
     _floor([[0, 400], [100, 400], [200, 400], [300, 400], [400, 400.5]]), r"homography.image: .*collinear"),
    ([[100, 400], [600, 420], [100, 400], [80, 690]], _floor(CORNERS),
     r"homography.image\[0\] and homography.image\[2\] are the same"),
    (CORNERS, np.r_[_floor(CORNERS[:3]), [[math.nan, 1.0]]], r"homography.floor\[3\] is not a finite point"),
    # five on one line and one off it: no 2-D layout of 4 points without 3 collinear
    ([[0, 400], [100, 400], [200, 400], [300, 400], [400, 400], [200, 700]],
     _floor([[0, 400], [100, 400], [200, 400], [300, 400], [400, 400], [200, 700]]),
     "homography: the point layout is degenerate"),
])
def test_homography_rejects(image, floor, message):
    with pytest.raises(ZoneError, match=message):
        homography(image, floor)


def test_homography_rejects_a_mislabelled_pair_by_reprojection_error():
    image = CORNERS + [[300.0, 500.0], [500.0, 600.0]]
    floor = _floor(image)
    floor[4] += [0.5, 0.0]  # half a metre off
    with pytest.raises(ZoneError, match=r"pair \d reprojects .* \(tolerance 0.05\)"):
        homography(image, floor)


def test_homography_rejects_points_on_both_sides_of_the_horizon():
    # TRUE_H's horizon is the line w = 0: y = -(1 + 0.0001 x) / 0.0008, about y = -1250
    image = CORNERS + [[300.0, -3000.0]]
    with pytest.raises(ZoneError, match="both sides of the horizon"):
        homography(image, _floor(image))


def test_project_beyond_the_horizon_is_nan():
    assert np.isnan(project(TRUE_H, [[300.0, -3000.0]])).all()


# ------------------------------------------------------------------ polygons


def test_self_intersecting_bow_tie_names_the_edges():
    message = r"hazard: self-intersecting polygon, edge 0 \(0->1\) intersects edge 2 \(2->3\)"
    with pytest.raises(ZoneError, match=message):
        validate_polygon([[0, 0], [2, 2], [2, 0], [0, 2]], "hazard")


def test_polygon_touching_itself_at_a_vertex_is_rejected():
    figure_eight = [[0, 0], [2, 0], [1, 1], [2, 2], [0, 2], [1, 1]]
    with pytest.raises(ZoneError, match="self-intersecting"):
        validate_polygon(figure_eight, "hazard")


@pytest.mark.parametrize("polygon, message", [
    ([[0, 0], [1, 1], [2, 2]], "zero area"),
    ([[0, 0], [1, 0], [3, 0], [2, 0]], "zero area"),
    ([[0, 0], [1, 0], [1, 0], [0, 1]], "vertices 1 and 2 repeat"),
    ([[0, 0], [1, 0]], "at least 3 points"),
    ([[0, 0], [1, math.inf], [0, 1]], r"\[1\] is not a finite point"),
    ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], r"list of \[x, y\] points"),
])
def test_degenerate_polygons_rejected(polygon, message):
    with pytest.raises(ZoneError, match=f"warning.polygon.*{message}"):
        validate_polygon(polygon, "warning.polygon")


def test_concave_polygon_accepted_with_point_in_polygon():
    polygon = validate_polygon(L_SHAPE, "hazard")
    inside = points_in_polygon([[1, 1], [1, 4], [5, 1], [4, 4], [7, 1], [-1, 1]], polygon)
    assert inside.tolist() == [True, True, True, False, False, False]


def test_distance_hand_computed():
    polygon = validate_polygon(L_SHAPE, "hazard")
    points = [[1, 1], [1, 5], [4, 4], [3, -3], [9, 6], [-3, 8], [6, 1]]
    expected = [0, 0,
                2,  # in the notch: 2 from edge (6,2)-(2,2) and from edge (2,2)-(2,6)
                3,  # below the bottom edge
                5,  # nearest vertex (6, 2): sqrt(3^2 + 4^2)
                math.sqrt(13),  # nearest vertex (0, 6): sqrt(3^2 + 2^2)
                0]  # on the boundary
    np.testing.assert_allclose(distance_to_polygon(np.asarray(points, float), polygon), expected, atol=1e-12)


def _reference_distance(point, polygon):
    """Plain Python: ray casting and point-to-segment distance, one edge at a time."""
    x, y = point
    inside, best = False, math.inf
    for k in range(len(polygon)):
        (ax, ay), (bx, by) = polygon[k], polygon[(k + 1) % len(polygon)]
        if (ay > y) != (by > y) and x < ax + (y - ay) * (bx - ax) / (by - ay):
            inside = not inside
        dx, dy = bx - ax, by - ay
        t = max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)))
        best = min(best, math.hypot(x - ax - t * dx, y - ay - t * dy))
    return 0.0 if inside else best


def test_distance_matches_plain_reference():
    rng = np.random.default_rng(1)
    polygon = validate_polygon([[0, 0], [5, -1], [7, 3], [4, 2], [3, 6], [-1, 4]], "hazard")
    points = rng.uniform(-4, 10, (300, 2))
    expected = [_reference_distance(p, polygon.tolist()) for p in points]
    np.testing.assert_allclose(distance_to_polygon(points, polygon), expected, atol=1e-12)
    assert (np.asarray(expected) == 0).sum() > 20  # some inside, most outside


# ------------------------------------------------------------- ground points


def test_ground_points_of_an_l_shaped_mask():
    mask = np.zeros((10, 8), bool)
    mask[2:9, 1:3] = True  # the leg, lowest row 8
    mask[6:8, 3:6] = True  # the foot, lowest row 7
    mask[0:2, 6] = True  # a column with a gap: its lowest pixel is row 4
    mask[4, 6] = True
    expected = [[1.5, 8.5], [2.5, 8.5], [3.5, 7.5], [4.5, 7.5], [5.5, 7.5], [6.5, 4.5]]
    np.testing.assert_array_equal(ground_points(mask), expected)
    assert ground_points(np.zeros((4, 4), bool)).shape == (0, 2)


# ------------------------------------------------------------------ zone set


def _pixel_spec(protective=None, warning=None):
    spec = {"units": "pixels", "hazard": SQUARE}
    if protective is not None:
        spec["protective"] = protective
    if warning is not None:
        spec["warning"] = warning
    return spec


def test_empty_mask_is_none():
    assert ZoneSet.from_spec(_pixel_spec()).person(np.zeros((50, 50), bool)) is None


@pytest.mark.parametrize("rings", [
    {"protective": {"distance": 50}, "warning": {"distance": 150}},
    {"protective": {"polygon": [[50, 50], [250, 50], [250, 250], [50, 250]]},
     "warning": {"polygon": [[0, 0], [350, 0], [350, 350], [0, 350]]}},
    {"protective": {"distance": 50}, "warning": {"polygon": [[0, 0], [350, 0], [350, 350], [0, 350]]}},
], ids=["distances", "polygons", "mixed"])
def test_zone_classification(rings):
    zones = ZoneSet.from_spec(_pixel_spec(**rings))
    cases = [(150, "hazard", 0.0), (229, "protective", 29.5), (299, "warning", 99.5), (399, None, 199.5)]
    for bottom, zone, distance in cases:
        result = zones.person(_bar(150, bottom))
        assert result == {"distance": pytest.approx(distance), "units": "pixels", "zone": zone,
                          "ground_point": [150.5, bottom + 0.5]}, (bottom, result)


def test_innermost_zone_of_any_ground_point_wins():
    zones = ZoneSet.from_spec(_pixel_spec({"distance": 50}, {"distance": 150}))
    mask = _bar(150, 299) | _bar(230, 219)  # one foot in warning (99.5 away), one in protective
    result = zones.person(mask)
    # the nearest ground point is (230.5, 219.5): the corner (200, 200) is sqrt(30.5^2 + 19.5^2) away
    assert result["zone"] == "protective"
    assert result["distance"] == pytest.approx(math.hypot(30.5, 19.5))
    assert result["ground_point"] == [230.5, 219.5]


def _metres_spec():
    image = CORNERS + [[300.0, 500.0], [500.0, 600.0]]
    return {"units": "metres", "homography": {"image": image, "floor": _floor(image).tolist()}}


def test_metres_mode_projects_the_foot_to_the_floor():
    foot = _floor([[300.5, 600.5]])[0]  # where the lowest pixel (row 600, column 300) stands
    hazard = (foot + [[1.0, -0.5], [2.0, -0.5], [2.0, 0.5], [1.0, 0.5]]).tolist()  # 1 m to the +X side
    spec = _metres_spec() | {"hazard": hazard, "protective": {"distance": 0.5}, "warning": {"distance": 1.5}}
    zones = ZoneSet.from_spec(spec)
    np.testing.assert_allclose(project(zones.matrix, [[300.5, 600.5]])[0], foot, atol=1e-9)
    result = zones.person(_bar(300, 600, top_row=400, shape=(720, 1280)))
    assert result == {"distance": pytest.approx(1.0, abs=1e-9), "units": "metres", "zone": "warning",
                      "ground_point": [300.5, 600.5]}


def test_metres_mode_matches_brute_force_over_a_wide_mask():
    hazard = [[2.0, 6.0], [3.0, 6.0], [3.0, 7.0], [2.0, 7.0]]
    zones = ZoneSet.from_spec(_metres_spec() | {"hazard": hazard})
    mask = np.zeros((720, 1280), bool)
    mask[400:560, 250:330] = True
    mask[560:600, 290:300] = True
    feet = ground_points(mask)
    distances = [_reference_distance(p, hazard) for p in _floor(feet)]
    result = zones.person(mask)
    assert result["distance"] == pytest.approx(min(distances), abs=1e-9)
    assert result["ground_point"] == feet[int(np.argmin(distances))].tolist()


def test_ground_points_beyond_the_horizon_are_not_on_the_floor():
    # floor = (x, y) * 0.01 / w with w = 0.01 y - 1: the horizon is the image row y = 100
    matrix = np.array([[0.01, 0, 0], [0, 0.01, 0], [0, 0.01, -1.0]])
    image = [[100.0, 200.0], [500.0, 200.0], [500.0, 400.0], [100.0, 400.0], [300.0, 300.0]]
    homogeneous = np.c_[image, np.ones(5)] @ matrix.T
    floor = (homogeneous[:, :2] / homogeneous[:, 2:]).tolist()
    zones = ZoneSet.from_spec({"units": "metres", "homography": {"image": image, "floor": floor},
                               "hazard": [[2, 2], [3, 2], [3, 3], [2, 3]]})
    sky = zones.person(_bar(300, 50, top_row=10))
    assert math.isnan(sky["distance"]) and sky["zone"] is None
    # an arm raised above the horizon beside a foot on the floor: the foot alone counts
    standing = zones.person(_bar(300, 50, top_row=10) | _bar(310, 300, top_row=60))
    assert standing["ground_point"] == [310.5, 300.5]
    assert standing["distance"] == pytest.approx(_reference_distance((3.105 / 2.005, 3.005 / 2.005),
                                                                     [[2, 2], [3, 2], [3, 3], [2, 3]]))


BAD_SPECS = [
    ([], "spec must be an object"),
    (_pixel_spec() | {"colour": "red"}, "unknown key 'colour'"),
    ({"hazard": SQUARE}, "units must be 'pixels' or 'metres'"),
    ({"units": "feet", "hazard": SQUARE}, "units must be"),
    ({"units": "metres", "hazard": SQUARE}, "homography is required"),
    (_pixel_spec() | {"homography": _metres_spec()["homography"]}, "homography is only allowed"),
    (_metres_spec() | {"hazard": SQUARE, "homography": {"image": CORNERS}}, "homography.floor is required"),
    (_metres_spec() | {"hazard": SQUARE, "homography": {"image": CORNERS, "floor": CORNERS, "h": 1}},
     "homography: unknown key 'h'"),
    (_metres_spec() | {"hazard": SQUARE, "homography": {"image": CORNERS[:3], "floor": CORNERS[:3]}},
     "homography: needs at least 4"),
    ({"units": "pixels"}, "hazard is required"),
    ({"units": "pixels", "hazard": [[0, 0], [2, 2], [2, 0], [0, 2]]}, "hazard: self-intersecting"),
    ({"units": "pixels", "hazard": "square"}, r"hazard must be a list of \[x, y\] points"),
    (_pixel_spec({"distance": 0}), r"protective.distance must be > 0 \(got 0\)"),
    (_pixel_spec({"distance": -1}), "protective.distance must be > 0"),
    (_pixel_spec({"distance": "1"}), "protective.distance must be a finite number"),
    (_pixel_spec({"distance": True}), "protective.distance must be a finite number"),
    (_pixel_spec({"distance": 1, "polygon": SQUARE}), "protective must have exactly one of"),
    (_pixel_spec({}), "protective must have exactly one of"),
    (_pixel_spec({"radius": 1}), "protective: unknown key 'radius'"),
    (_pixel_spec(warning=5), "warning must be an object"),
    (_pixel_spec({"distance": 50}, {"distance": 50}), r"warning.distance must be > protective.distance \(50 <= 50\)"),
    (_pixel_spec({"distance": 50}, {"distance": 20}), "warning.distance must be > protective.distance"),
    (_pixel_spec({"polygon": [[0, 0], [150, 0], [150, 150], [0, 150]]}), "protective.polygon must enclose hazard"),
    (_pixel_spec({"polygon": [[0, 0], [3, 3], [3, 0], [0, 3]]}), "protective.polygon: self-intersecting"),
    (_pixel_spec({"polygon": [[50, 50], [250, 50], [250, 250], [50, 250]]},
                 {"polygon": [[60, 0], [400, 0], [400, 400], [60, 400]]}),
     "warning.polygon must enclose protective.polygon"),
    (_pixel_spec({"distance": 80}, {"polygon": [[50, 50], [250, 50], [250, 250], [50, 250]]}),
     r"warning.polygon must lie beyond protective.distance \(it comes within 50"),
    (_pixel_spec({"polygon": [[0, 0], [300, 0], [300, 300], [0, 300]]}, {"distance": 50}),
     r"warning.distance must reach past protective.polygon"),
]


@pytest.mark.parametrize("spec, message", BAD_SPECS, ids=[message for _, message in BAD_SPECS])
def test_spec_errors_name_the_field(spec, message):
    with pytest.raises(ZoneError, match=message):
        ZoneSet.from_spec(copy.deepcopy(spec))


def test_crc_is_stable_across_key_order_and_number_spelling():
    spec = _metres_spec() | {"hazard": [[2, 6], [3, 6], [3, 7], [2, 7]], "protective": {"distance": 0.5},
                             "warning": {"distance": 1.5}}
    zones = ZoneSet.from_spec(spec)
    reordered = {key: spec[key] for key in reversed(list(spec))}
    reordered["homography"] = {"floor": spec["homography"]["floor"], "image": spec["homography"]["image"]}
    floats = copy.deepcopy(spec) | {"hazard": [[2.0, 6.0], [3.0, 6.0], [3.0, 7.0], [2.0, 7.0]]}
    assert ZoneSet.from_spec(reordered).crc == zones.crc == ZoneSet.from_spec(floats).crc
    assert ZoneSet.from_spec(zones.to_dict()).crc == zones.crc
    assert zones.crc_hex == f"{zones.crc:08x}" and len(zones.crc_hex) == 8
    below_rounding = copy.deepcopy(spec)
    below_rounding["hazard"][0][0] += 1e-9
    assert ZoneSet.from_spec(below_rounding).crc == zones.crc
    moved = copy.deepcopy(spec)
    moved["hazard"][0][0] += 0.01
    assert ZoneSet.from_spec(moved).crc != zones.crc
    farther = copy.deepcopy(spec)
    farther["warning"]["distance"] = 1.6
    assert ZoneSet.from_spec(farther).crc != zones.crc


def test_to_dict_is_the_normalised_spec():
    zones = ZoneSet.from_spec(_pixel_spec({"distance": 50}))
    assert zones.to_dict() == {"units": "pixels", "hazard": [[100.0, 100.0], [200.0, 100.0], [200.0, 200.0],
                                                             [100.0, 200.0]], "protective": {"distance": 50.0}}
