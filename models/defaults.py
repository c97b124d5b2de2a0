"""Defaults shared by training, export, offline inference and the service, kept in
one place so that they cannot drift apart. Standard library only (the service
reads them without torch).
"""

from __future__ import annotations

# A camera frame when none is named: 640x360 (16:9), as (height, width) and as text.
DEFAULT_FRAME_HW = (360, 640)
DEFAULT_FRAME_SIZE = "640x360"
# Past frames whose FPN features the support cache keeps for Temporal RoI Align (T);
# the thesis's setting, and what the exported graphs are checked with.
DEFAULT_SUPPORT_FRAMES = 2
