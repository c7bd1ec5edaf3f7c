"""Serve a given ``/object_info`` (e.g. a real ComfyUI's) from the simulator, validating against it.

Converted UI workflows use hundreds of node classes the simulator does not implement. Serving the
real server's ``/object_info`` lets them be validated exactly as that server would (same inputs,
ranges, options, output types), and run: classes the simulator implements keep their behaviour,
the others run a generic stand-in that passes matching inputs through (a LoRA loader hands on its
MODEL) or makes a small placeholder of each output type, and, for output nodes, saves the images
it receives with ComfyUI's metadata.
"""

from __future__ import annotations

import copy
import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from .images import ImageBatch, MaskBatch
from .nodes import Conditioning, ExecContext, Latent, ModelPart, NodeClass, NodeResult, _save_batch

_PLAIN = {"STRING": str, "INT": int, "FLOAT": float, "BOOLEAN": bool}
_UPLOADS = {"image_upload": "image/", "video_upload": "video/", "audio_upload": "audio/"}
_MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")


@dataclass(frozen=True)
class Opaque:
    """A value of a type the simulator does not model (SIGMAS, CLIP_VISION_OUTPUT, ...)."""

    type: str
    made_by: str


def _first(inputs: dict, kind: type) -> Any:
    return next((v for v in inputs.values() if isinstance(v, kind)), None)


def _placeholder(kind: str, class_type: str, inputs: dict) -> Any:
    """An output value of ``kind``: the first input of that kind if any, else a small stand-in."""
    if kind == "IMAGE":
        return _first(inputs, ImageBatch) or ImageBatch([Image.new("RGB", (64, 64), (128, 128, 128))])
    if kind == "MASK":
        return _first(inputs, MaskBatch) or MaskBatch([Image.new("L", (64, 64), 0)])
    if kind == "LATENT":
        found = _first(inputs, Latent)
        if found is not None:
            return found
        size = [inputs.get(k) for k in ("width", "height", "batch_size")]
        width, height, batch = (v if isinstance(v, int) and v > 0 else d for v, d in zip(size, (512, 512, 1)))
        return Latent(width, height, batch)
    if kind in ("MODEL", "CLIP", "VAE"):
        found = next((v for v in inputs.values() if isinstance(v, ModelPart) and v.kind == kind), None)
        if found is not None:
            return found
        name = next((v for v in inputs.values() if isinstance(v, str) and v.endswith(_MODEL_SUFFIXES)), class_type)
        return ModelPart(kind, name)
    if kind in _PLAIN:
        plain = _PLAIN[kind]
        return next((v for v in inputs.values() if type(v) is plain), plain())
    if kind == "CONDITIONING":
        found = _first(inputs, Conditioning)
        if found is not None:
            return found
        text = next((v for v in inputs.values() if isinstance(v, str)), "")
        clip = _first(inputs, ModelPart)
        return Conditioning(text, clip.ckpt_name if clip else class_type)
    return Opaque(str(kind), class_type)


def _generic(name: str, info: Mapping) -> NodeClass:
    outputs = list(info.get("output") or [])

    async def run(ctx: ExecContext, inputs: dict) -> NodeResult:
        await ctx.work()
        values = tuple(_placeholder(kind, name, inputs) for kind in outputs)
        ui = None
        images = _first(inputs, ImageBatch)
        if info.get("output_node") and images is not None:
            given = inputs.get("filename_prefix")
            prefix = given if isinstance(given, str) else name
            ui = {"images": _save_batch(ctx, images, prefix, "output")}
        return NodeResult(values, ui)

    return NodeClass(name, copy.deepcopy(dict(info)), run)


class _ListsInputFolder(NodeClass):
    """A stand-in whose upload inputs (LoadVideo's ``file``...) list the simulator's input folder at
    every read of ``info``, as the real server lists its own."""

    def __init__(self, base: NodeClass, input_dir: Path, uploads: dict[tuple[str, str], str]):
        super().__init__(base.name, base.info, base.run, base.validate, base.validated_inputs, base.is_changed)
        self._input_dir, self._uploads = input_dir, uploads

    @property
    def info(self) -> dict:
        for (section, name), mime in self._uploads.items():
            files = sorted(
                f.name
                for f in (self._input_dir.iterdir() if self._input_dir.is_dir() else ())
                if f.is_file() and (mimetypes.guess_type(f.name)[0] or "").startswith(mime)
            )
            spec = self._info["input"][section][name]
            if isinstance(spec[0], list):
                spec[0] = files
            elif len(spec) > 1 and isinstance(spec[1], dict):
                spec[1]["options"] = files
        return self._info

    @info.setter
    def info(self, value: dict) -> None:
        self._info = value


def _uploads(info: Mapping) -> dict[tuple[str, str], str]:
    """(section, input) -> MIME prefix of the file-choosing inputs of an /object_info entry."""
    found = {}
    for section in ("required", "optional"):
        for name, spec in ((info.get("input") or {}).get(section) or {}).items():
            opts = spec[1] if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            for flag, mime in _UPLOADS.items():
                if opts.get(flag):
                    found[(section, name)] = mime
    return found


def served_nodes(
    object_info: Mapping[str, Any], own: dict[str, NodeClass], input_dir: Path | None = None
) -> dict[str, NodeClass]:
    """Node classes exactly as ``object_info`` declares them: the simulator's own behaviour where it
    has the class, a generic stand-in elsewhere. Inputs that choose an uploaded file (LoadImage,
    LoadVideo, ...) list the simulator's input folder."""
    out: dict[str, NodeClass] = {}
    for name, info in object_info.items():
        if not isinstance(info, Mapping):
            raise ValueError(f"object_info[{name!r}] is not an object: give the JSON of GET /object_info")
        mine = own.get(name)
        if mine is not None and type(mine) is not NodeClass:  # it lists the input folder into its info
            mine.info = copy.deepcopy(dict(info))
            out[name] = mine
        elif mine is not None:
            out[name] = replace(mine, info=copy.deepcopy(dict(info)))
        else:
            out[name] = _generic(name, info)
            uploads = _uploads(info)
            if uploads and input_dir is not None:
                out[name] = _ListsInputFolder(out[name], input_dir, uploads)
    return out
