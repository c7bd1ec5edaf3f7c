"""The API-format workflows shipped with the simulator (a copy of the recorded test workflows)."""

from __future__ import annotations

import json
from importlib.resources import files


def workflow_names() -> list[str]:
    """Names accepted by `load_workflow`, e.g. "tiny", "default_txt2img"."""
    return sorted(p.name[:-5] for p in files(__package__).joinpath("workflows").iterdir() if p.name.endswith(".json"))


def load_workflow(name: str) -> dict:
    """A fresh copy of a shipped workflow, by name with or without ".json"."""
    if not name.endswith(".json"):
        name += ".json"
    return json.loads(files(__package__).joinpath("workflows").joinpath(name).read_text(encoding="utf-8"))
