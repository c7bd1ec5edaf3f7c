"""comfynb: drive ComfyUI servers from notebooks and scripts without losing results."""

# The notebook layer, last: it registers itself with the layers below (session submit hook,
# IPython HTML formatters); nothing below imports it.
from . import display as _display
from .cloud import Cloud
from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all
from .jobs import Job, as_completed
from .progress import progress
from .results import FileRef, ImageRef, Result
from .session import Session
from .transport import Limits, Timeouts
from .workflow import Workflow

_display.register()

__version__ = "0.1.0"
__all__ = [
    *_errors_all,
    "Cloud",
    "FileRef",
    "ImageRef",
    "Job",
    "Limits",
    "Result",
    "Session",
    "Timeouts",
    "Workflow",
    "as_completed",
    "progress",
]
