"""The workflow metadata ComfyUI's save nodes embed in the files they write, for any simulated save node.

Real ComfyUI puts the API prompt and each ``extra_pnginfo`` key (the frontend sends ``workflow``)
into every output file: PNG tEXt chunks, EXIF tags of animated WebP, container tags of videos
and audio. Users load workflows back from those files, so the simulator writes them the same way;
every save node calls these functions rather than building metadata itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

PROMPT_TAG = 0x0110  # EXIF "Model": ComfyUI's SaveAnimatedWEBP puts "prompt:{json}" here
FIRST_EXTRA_TAG = 0x010F  # EXIF "Make": the first extra_pnginfo key, the next one at 0x010E, ...


def text_chunks(prompt: Mapping | None, extra_pnginfo: Mapping | None) -> dict[str, str]:
    """ComfyUI's PNG text: ``prompt`` plus one chunk per ``extra_pnginfo`` key, each JSON."""
    text = {}
    if prompt is not None:
        text["prompt"] = json.dumps(prompt)
    if isinstance(extra_pnginfo, Mapping):
        text.update((key, json.dumps(value)) for key, value in extra_pnginfo.items())
    return text


def png_info(text: Mapping[str, str]) -> PngInfo | None:
    """A PngInfo with one tEXt chunk per item (None when there is nothing to write)."""
    if not text:
        return None
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    return info


def webp_exif(prompt: Mapping | None, extra_pnginfo: Mapping | None) -> Image.Exif:
    """SaveAnimatedWEBP's EXIF: 0x0110 ``"prompt:{json}"``, then 0x010F, 0x010E, ... ``"key:{json}"``."""
    exif = Image.Exif()
    if prompt is not None:
        exif[PROMPT_TAG] = f"prompt:{json.dumps(prompt)}"
    if isinstance(extra_pnginfo, Mapping):
        for i, (key, value) in enumerate(extra_pnginfo.items()):
            exif[FIRST_EXTRA_TAG - i] = f"{key}:{json.dumps(value)}"
    return exif


def save_webp(
    frames: Sequence[Image.Image],
    path: Path,
    prompt: Mapping | None,
    extra_pnginfo: Mapping | None,
    *,
    fps: float = 6.0,
) -> None:
    """An animated WebP with ComfyUI's EXIF metadata."""
    frames[0].save(
        path,
        format="WEBP",
        save_all=True,
        append_images=list(frames[1:]),
        duration=round(1000 / fps),
        exif=webp_exif(prompt, extra_pnginfo),
        lossless=False,
        quality=80,
    )


def container_tags(prompt: Mapping | None, extra_pnginfo: Mapping | None) -> dict[str, str]:
    """Video and audio container tags as ComfyUI's SaveVideo / SaveAudio write them (same keys as PNG)."""
    return text_chunks(prompt, extra_pnginfo)


def save_video(
    frames: Sequence[Image.Image],
    path: Path,
    prompt: Mapping | None,
    extra_pnginfo: Mapping | None,
    *,
    fps: float = 8.0,
    container: str = "mp4",
) -> None:
    """An H.264 MP4 (or VP9 WebM) whose container tags carry the workflow, written with PyAV.

    MP4 keeps custom tags only with ``movflags=use_metadata_tags``, which ComfyUI sets too.
    """
    import av
    import numpy as np

    codec, options = ("libvpx-vp9", {}) if container == "webm" else ("libx264", {"movflags": "use_metadata_tags"})
    width, height = (frames[0].width // 2) * 2, (frames[0].height // 2) * 2
    with av.open(str(path), "w", format=container, options=options) as out:
        out.metadata.update(container_tags(prompt, extra_pnginfo))
        stream: Any = out.add_stream(codec, rate=round(fps))  # a VideoStream (PyAV types it as any stream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            rgb = np.asarray(frame.convert("RGB").resize((width, height)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def metadata_of(ctx: Any) -> tuple[dict | None, dict | None]:
    """(prompt, extra_pnginfo) of a running node's prompt, as a save node passes them on."""
    extra = (getattr(ctx, "extra_data", None) or {}).get("extra_pnginfo")
    return getattr(ctx, "prompt", None), extra if isinstance(extra, dict) else None


def save_with_metadata(path: Path, frames: Sequence[Image.Image], prompt: Mapping, extra: Mapping | None) -> Path:
    """Write ``frames`` with metadata in the format that ``path``'s suffix names (.png, .webp, .mp4, .webm)."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        frames[0].save(path, pnginfo=png_info(text_chunks(prompt, extra)))
    elif suffix == ".webp":
        save_webp(frames, path, prompt, extra)
    elif suffix in (".mp4", ".webm"):
        save_video(frames, path, prompt, extra, container=suffix[1:])
    else:
        raise ValueError(f"no metadata writer for {suffix!r} files")
    return path
