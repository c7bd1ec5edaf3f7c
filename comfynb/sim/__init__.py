"""The embedded ComfyUI simulator: a protocol-faithful ComfyUI 0.8.0 server without models or GPU.

    async with Simulator() as sim:            # or: with Simulator().running() as sim:
        ...  # talk to sim.url like to a real ComfyUI server

It follows the recorded protocol traces (message order, targeted vs broadcast delivery, caching,
history, /api/jobs) and can inject faults on request (`Faults`, `sim.faults.update(...)`).
"""

from .faults import Faults
from .simulator import Simulator

__all__ = ["Faults", "Simulator"]
