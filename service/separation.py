"""Separation distances from the standards, as pure functions: the ISO 13855
minimum distance of a protective device and the ISO/TS 15066 protective
separation distance of speed-and-separation monitoring, plus the check of a
configured protective distance against them.

These help size the advisory zones; they do not make this service a
protective device. Lengths in millimetres, times in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HAND_ARM_SPEED_MM_S = 2000.0  # ISO 13855 K for reaching with hand/arm
WALKING_SPEED_MM_S = 1600.0  # ISO 13855 K for approach of the whole body
SWITCH_MM = 500.0  # above this S, the walking speed applies, and S stays >= 500 mm
FLOOR_MM = 100.0  # S is never below 100 mm with K = 2000 mm/s


def _non_negative(**values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0 (got {value!r})")


@dataclass(frozen=True)
class MinimumDistance:
    """ISO 13855 S = K * T + C and how it was reached."""

    s_mm: float
    k_mm_s: float
    formula: str


def minimum_distance(approach_speed_mm_s: float | None = None, *, stopping_time_s: float,
                     intrusion_c_mm: float) -> MinimumDistance:
    """ISO 13855 minimum distance S = K * T + C.

    T is the overall system stopping performance (device response + stopping
    time), C the intrusion distance (e.g. 8 * (d - 14) mm for an ESPE of
    detection capability d <= 40 mm).

    With ``approach_speed_mm_s`` given, that K is used as is: S = K * T + C
    (e.g. K = 1600 mm/s for a detection zone parallel to the approach); no
    floor or switch is applied.

    Without it, the two-step rule of ISO 13855:2010, 6.2.3 (orthogonal approach
    to an ESPE with d <= 40 mm) is implemented. (ISO 13855:2024 writes C as
    D_DS + Z and keeps the 2000/1600 switch at 500 mm; its other details were
    not checked here.)

    1. S = 2000 * T + C. If S <= 500 mm, use it, but not less than 100 mm.
    2. If S > 500 mm, recompute S = 1600 * T + C. If that is > 500 mm use it,
       otherwise use 500 mm (S with K = 1600 shall not be less than 500 mm).

    Boundaries: S = 500 mm exactly with K = 2000 stays at K = 2000; the
    K = 1600 result is clamped to 500 mm when it is <= 500 mm.
    """
    _non_negative(stopping_time_s=stopping_time_s, intrusion_c_mm=intrusion_c_mm)
    t, c = float(stopping_time_s), float(intrusion_c_mm)
    if approach_speed_mm_s is not None:
        _non_negative(approach_speed_mm_s=approach_speed_mm_s)
        k = float(approach_speed_mm_s)
        s = k * t + c
        return MinimumDistance(s, k, f"S = K*T + C = {k:g}*{t:g} + {c:g} = {s:g} mm")
    s = HAND_ARM_SPEED_MM_S * t + c
    text = f"S = 2000*{t:g} + {c:g} = {s:g} mm"
    if s <= SWITCH_MM:
        if s < FLOOR_MM:
            return MinimumDistance(FLOOR_MM, HAND_ARM_SPEED_MM_S, f"{text} < 100 mm, so S = 100 mm")
        return MinimumDistance(s, HAND_ARM_SPEED_MM_S, f"{text} <= 500 mm, so K = 2000 mm/s stands")
    slow = WALKING_SPEED_MM_S * t + c
    text = f"{text} > 500 mm, so S = 1600*{t:g} + {c:g} = {slow:g} mm"
    if slow > SWITCH_MM:
        return MinimumDistance(slow, WALKING_SPEED_MM_S, text)
    return MinimumDistance(SWITCH_MM, WALKING_SPEED_MM_S, f"{text} <= 500 mm, so S = 500 mm")


@dataclass(frozen=True)
class ProtectiveSeparation:
    """ISO/TS 15066 S_p and its terms, in mm."""

    s_p_mm: float
    s_h_mm: float
    s_r_mm: float
    s_s_mm: float
    c_mm: float
    z_d_mm: float
    z_r_mm: float
    formula: str


def protective_separation_distance(v_h_mm_s: float, v_r_mm_s: float, t_r_s: float, t_s_s: float,
                                   s_s_mm: float, c_mm: float, z_d_mm: float, z_r_mm: float) -> ProtectiveSeparation:
    """ISO/TS 15066:2016, 5.5.4.2.3: S_p = S_h + S_r + S_s + C + Z_d + Z_r.

    - S_h = v_h * (T_r + T_s): the person keeps approaching at v_h while the
      system reacts (T_r) and the robot stops (T_s);
    - S_r = v_r * T_r: the robot keeps moving at v_r until it starts to stop;
    - S_s: the robot's stopping distance (from its stopping data), given;
    - C: intrusion distance (ISO 13855); Z_d, Z_r: position uncertainty of the
      person (the sensing, here this service) and of the robot.

    The TS writes S_h and S_r as integrals of the speeds over those intervals;
    this is its constant-speed simplification, which is exact when v_h and v_r
    are the largest speeds reachable in those intervals (use those).
    T_r must include this service's latency: see ``reaction_time_s``.
    """
    _non_negative(v_h_mm_s=v_h_mm_s, v_r_mm_s=v_r_mm_s, t_r_s=t_r_s, t_s_s=t_s_s,
                  s_s_mm=s_s_mm, c_mm=c_mm, z_d_mm=z_d_mm, z_r_mm=z_r_mm)
    s_h = v_h_mm_s * (t_r_s + t_s_s)
    s_r = v_r_mm_s * t_r_s
    s_p = s_h + s_r + s_s_mm + c_mm + z_d_mm + z_r_mm
    formula = (f"S_p = v_h*(T_r+T_s) + v_r*T_r + S_s + C + Z_d + Z_r = {v_h_mm_s:g}*({t_r_s:g}+{t_s_s:g}) + "
               f"{v_r_mm_s:g}*{t_r_s:g} + {s_s_mm:g} + {c_mm:g} + {z_d_mm:g} + {z_r_mm:g} = {s_p:g} mm")
    return ProtectiveSeparation(float(s_p), float(s_h), float(s_r), float(s_s_mm), float(c_mm),
                                float(z_d_mm), float(z_r_mm), formula)


def reaction_time_s(plc_and_robot_s: float, service_p99_ms: float) -> float:
    """T_r for ``protective_separation_distance``: the PLC and robot controller's
    reaction time plus this service's measured p99 end-to-end latency (capture
    to event), since a person is only seen once the service has reported them."""
    _non_negative(plc_and_robot_s=plc_and_robot_s, service_p99_ms=service_p99_ms)
    return float(plc_and_robot_s) + float(service_p99_ms) / 1000.0


def check_protective_distance(configured_mm: float, required_mm: float) -> dict:
    """Compare a configured protective distance with the required one:
    {"ok", "configured_mm", "required_mm", "shortfall_mm", "warning"}; the
    warning is None when the configured distance is long enough."""
    _non_negative(configured_mm=configured_mm, required_mm=required_mm)
    shortfall = max(0.0, float(required_mm) - float(configured_mm))
    warning = None
    if shortfall > 0:
        warning = (f"configured protective distance {configured_mm:g} mm is shorter than the required "
                   f"{required_mm:g} mm (by {shortfall:g} mm); a person can reach the hazard before the robot "
                   f"stops. Advisory only: size the certified protective devices by the standards.")
    return {"ok": shortfall == 0, "configured_mm": float(configured_mm), "required_mm": float(required_mm),
            "shortfall_mm": shortfall, "warning": warning}
