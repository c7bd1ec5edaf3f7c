"""Helpers for tests of UI-format workflows: a server's /object_info that has the files a workflow uses."""

import json

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")
_UPLOADS = ("image_upload", "video_upload", "audio_upload")


def with_models(object_info: dict, prompt: dict) -> dict:
    """A copy of ``object_info`` whose loaders also list the model files ``prompt`` uses (a server that has them)."""
    info = json.loads(json.dumps(object_info))
    for node in prompt.values():
        spec_of = info[node["class_type"]]["input"]
        for name, value in node["inputs"].items():
            if isinstance(value, str) and value.endswith(MODEL_SUFFIXES):
                for section in ("required", "optional"):
                    spec = (spec_of.get(section) or {}).get(name)
                    if spec and isinstance(spec[0], list) and value not in spec[0]:
                        spec[0].append(value)
                    elif spec and spec[0] == "COMBO" and value not in spec[1]["options"]:
                        spec[1]["options"].append(value)
    return info


def with_inputs(object_info: dict, prompt: dict) -> dict:
    """A copy of ``object_info`` whose loaders and upload inputs also list what ``prompt`` uses."""
    info = with_models(object_info, prompt)
    for node in prompt.values():
        spec_of = info[node["class_type"]]["input"]
        for name, value in node["inputs"].items():
            for section in ("required", "optional"):
                spec = (spec_of.get(section) or {}).get(name)
                if not spec or len(spec) < 2 or not any(spec[1].get(u) for u in _UPLOADS):
                    continue
                options = spec[0] if isinstance(spec[0], list) else spec[1].setdefault("options", [])
                if value not in options:
                    options.append(value)
    return info
