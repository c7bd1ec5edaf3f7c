"""The workflows shipped with the simulator: API format (a copy of the recorded test workflows) and, under
``workflows/ui/``, UI format (what ComfyUI saves), for tutorials and tests."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path


def workflow_names() -> list[str]:
    """Names accepted by `load_workflow`, e.g. "tiny", "default_txt2img"."""
    return sorted(p.name[:-5] for p in files(__package__).joinpath("workflows").iterdir() if p.name.endswith(".json"))


def load_workflow(name: str) -> dict:
    """A fresh copy of a shipped workflow, by name with or without ".json"."""
    if not name.endswith(".json"):
        name += ".json"
    return json.loads(files(__package__).joinpath("workflows").joinpath(name).read_text(encoding="utf-8"))


def ui_workflow_path(name: str) -> Path:
    """The path of a shipped UI-format workflow (what ComfyUI's Save writes), e.g. "default_txt2img"."""
    if not name.endswith(".json"):
        name += ".json"
    path = Path(str(files(__package__).joinpath("workflows").joinpath("ui").joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(f"no shipped UI workflow {name!r}")
    return path
