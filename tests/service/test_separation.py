"""service.separation: worked examples of ISO 13855 (the 2000/1600 mm/s switch at
500 mm and the 100 mm floor) and ISO/TS 15066, computed by hand."""

from __future__ import annotations

import pytest

from service.separation import (check_protective_distance, minimum_distance, protective_separation_distance,
                                reaction_time_s)


def test_iso13855_stays_with_hand_speed_below_500():
    # ESPE d = 30 mm: C = 8 * (30 - 14) = 128 mm; T = 0.1 s: 2000*0.1 + 128 = 328 mm
    result = minimum_distance(stopping_time_s=0.1, intrusion_c_mm=128)
    assert result.k_mm_s == 2000
    assert result.s_mm == pytest.approx(328)
    assert "328" in result.formula


def test_iso13855_exactly_500_keeps_hand_speed():
    result = minimum_distance(stopping_time_s=0.25, intrusion_c_mm=0)  # 2000*0.25 = 500, not > 500
    assert (result.s_mm, result.k_mm_s) == (500, 2000)


def test_iso13855_switches_to_walking_speed_above_500():
    # 2000*0.25 + 128 = 628 > 500, so 1600*0.25 + 128 = 528 >= 500: 528 mm with K = 1600
    result = minimum_distance(stopping_time_s=0.25, intrusion_c_mm=128)
    assert result.k_mm_s == 1600
    assert result.s_mm == pytest.approx(528)
    # the SICK miniTwin4 manual's example: T = 0.32 s, d = 14 mm: 640 > 500 -> 1600*0.32 = 512 mm
    example = minimum_distance(stopping_time_s=0.32, intrusion_c_mm=0)
    assert (example.s_mm, example.k_mm_s) == (pytest.approx(512), 1600)


def test_iso13855_walking_speed_result_clamped_at_500():
    # 2000*0.2 + 128 = 528 > 500, but 1600*0.2 + 128 = 448 < 500: S = 500 mm
    result = minimum_distance(stopping_time_s=0.2, intrusion_c_mm=128)
    assert (result.s_mm, result.k_mm_s) == (500, 1600)
    # just above the switch: 2000*0.2505 = 501 > 500 -> 1600*0.2505 = 400.8 -> 500
    assert minimum_distance(stopping_time_s=0.2505, intrusion_c_mm=0).s_mm == 500


def test_iso13855_floor_of_100():
    # 2000*0.03 + 0 = 60 mm < 100 mm: S = 100 mm
    result = minimum_distance(stopping_time_s=0.03, intrusion_c_mm=0)
    assert (result.s_mm, result.k_mm_s) == (100, 2000)
    assert minimum_distance(stopping_time_s=0.05, intrusion_c_mm=0).s_mm == pytest.approx(100)


def test_iso13855_given_speed_is_used_as_is():
    # parallel approach: K = 1600, C = 1200 - 0.4 * 300 = 1080 mm; T = 0.5 s: 800 + 1080 = 1880 mm
    result = minimum_distance(1600, stopping_time_s=0.5, intrusion_c_mm=1080)
    assert (result.s_mm, result.k_mm_s) == (pytest.approx(1880), 1600)
    assert minimum_distance(2000, stopping_time_s=0.01, intrusion_c_mm=0).s_mm == pytest.approx(20)  # no floor


def test_iso13855_rejects_bad_inputs():
    with pytest.raises(ValueError, match="stopping_time_s"):
        minimum_distance(stopping_time_s=-0.1, intrusion_c_mm=0)
    with pytest.raises(ValueError, match="intrusion_c_mm"):
        minimum_distance(stopping_time_s=0.1, intrusion_c_mm=float("nan"))


def test_reaction_time_adds_the_service_p99():
    assert reaction_time_s(0.1, 150) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="service_p99_ms"):
        reaction_time_s(0.1, -1)


def test_iso_ts_15066_protective_separation_distance():
    # v_h = 1600 mm/s, v_r = 1000 mm/s, T_r = 0.1 s PLC+robot + 150 ms service p99 = 0.25 s, T_s = 0.3 s,
    # S_s = 200 mm, C = 128 mm, Z_d = 100 mm, Z_r = 20 mm:
    # S_h = 1600*(0.25 + 0.3) = 880, S_r = 1000*0.25 = 250, S_p = 880 + 250 + 200 + 128 + 100 + 20 = 1578 mm
    result = protective_separation_distance(1600, 1000, reaction_time_s(0.1, 150), 0.3, 200, 128, 100, 20)
    assert result.s_h_mm == pytest.approx(880)
    assert result.s_r_mm == pytest.approx(250)
    assert result.s_p_mm == pytest.approx(1578)
    assert "1578" in result.formula
    # a slower service (p99 250 ms) adds v_h*0.1 + v_r*0.1 = 160 + 100 = 260 mm
    slower = protective_separation_distance(1600, 1000, reaction_time_s(0.1, 250), 0.3, 200, 128, 100, 20)
    assert slower.s_p_mm - result.s_p_mm == pytest.approx(260)
    with pytest.raises(ValueError, match="v_r_mm_s"):
        protective_separation_distance(1600, -1, 0.1, 0.3, 200, 128, 100, 20)


def test_check_protective_distance():
    short = check_protective_distance(1200, 1578)
    assert short["ok"] is False
    assert short["shortfall_mm"] == pytest.approx(378)
    assert "1200" in short["warning"] and "1578" in short["warning"] and "shorter" in short["warning"]
    enough = check_protective_distance(1600, 1578)
    assert enough["ok"] is True and enough["warning"] is None and enough["shortfall_mm"] == 0
    assert check_protective_distance(1578, 1578)["ok"] is True
