"""Conversions of UI-format workflows to API prompts per second, over the template corpus.

Side by side in one run: conversion alone, conversion plus the checks against /object_info that a
sweep does first, and loading an API prompt back from a PNG (the embedded-file path).

Run: .venv/bin/python bench/ui_conversion.py [SECONDS]  (needs the dev extra: the template packages)
"""

from __future__ import annotations

import importlib
import io
import json
import sys
import time
from pathlib import Path

from PIL import Image

from comfynb import Workflow
from comfynb.checks import check_prompt
from comfynb.errors import WorkflowError
from comfynb.sim.metadata import png_info, text_chunks
from comfynb.uiformat import ui_to_api

ROOT = Path(__file__).resolve().parents[1]
OBJECT_INFO = json.loads((ROOT / "tests" / "fixtures" / "object_info_0.8.0.json").read_text())
PACKAGES = [
    "comfyui_workflow_templates_media_image",
    "comfyui_workflow_templates_media_video",
    "comfyui_workflow_templates_media_other",
]


def corpus() -> list[dict]:
    out = []
    for name in PACKAGES:
        folder = Path(importlib.import_module(name).__file__).parent / "templates"
        for path in sorted(folder.glob("*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("nodes"), list):
                try:
                    ui_to_api(data, OBJECT_INFO)
                except WorkflowError:
                    continue
                out.append(data)
    return out


def rate(label: str, items: list, fn, seconds: float) -> None:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for item in items:
            fn(item)
        done += len(items)
    elapsed = time.perf_counter() - start
    print(f"{label:<42} {done / elapsed:>10,.0f} /s   ({done} in {elapsed:.2f} s)")


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    workflows = corpus()
    nodes = sum(len(w["nodes"]) for w in workflows)
    print(f"{len(workflows)} convertible templates, {nodes} top-level nodes, ComfyUI 0.8.0 /object_info")
    rate("UI -> API conversion", workflows, lambda w: ui_to_api(w, OBJECT_INFO), seconds)
    prompts = [ui_to_api(w, OBJECT_INFO) for w in workflows]
    rate("check against /object_info", prompts, lambda p: check_prompt(p, OBJECT_INFO), seconds)
    pngs = []
    for w, p in zip(workflows[:20], prompts[:20]):
        buf = io.BytesIO()
        Image.new("RGB", (64, 64)).save(buf, format="PNG", pnginfo=png_info(text_chunks(p, {"workflow": w})))
        pngs.append(buf.getvalue())
    rate("Workflow.load(PNG bytes) via 'prompt'", pngs, Workflow.load, seconds)


if __name__ == "__main__":
    main()
