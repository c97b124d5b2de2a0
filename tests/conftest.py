"""Test-session setup that must happen before any test module imports torch or triton."""

import os
from pathlib import Path

# Without an NVIDIA device, Triton kernels run on the CPU interpreter; the
# variable is read when triton is first imported (torchvision imports it), so
# it is set here, before collection.
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")
