"""The simulator's video, audio, animation, text and latent nodes, writing real, playable files.

Users' notebooks and tests need media that players and decoders accept, so these nodes encode
real MP4 (H.264 + AAC), WebM (VP9/AV1 + Opus), FLAC, animated WebP/PNG/GIF and safetensors
latents. Video and audio go through PyAV (``pip install 'comfynb[media]'``; its wheels bundle
FFmpeg), imported only when such a node runs, so the rest of the simulator works without it.
Their ``/object_info`` entries and UI outputs are shaped like ComfyUI 0.8.0's (``images`` +
``animated`` for videos, ``audio``, ``text``, ``latents``) and VideoHelperSuite's (``gifs`` with
``format``, ``frame_rate``, ``fullpath``).
"""

from __future__ import annotations

import json
import math
import mimetypes
import os
import random
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import metadata
from .images import ImageBatch
from .nodes import ExecContext, Latent, NodeClass, NodeResult, _info, _input_file, default_nodes

_HIDDEN = {"prompt": ["PROMPT"], "extra_pnginfo": ["EXTRA_PNGINFO"]}
_VHS_MODULE = "custom_nodes.ComfyUI-VideoHelperSuite"
VHS_FORMATS = ["image/gif", "image/webp", "video/h264-mp4", "video/webm"]


@dataclass
class Audio:
    """AUDIO: float samples in [-1, 1], shape (channels, samples) (ComfyUI's waveform without the batch)."""

    samples: np.ndarray
    sample_rate: int

    def __str__(self) -> str:
        channels, length = self.samples.shape
        return f"{{'waveform': tensor of shape [1, {channels}, {length}], 'sample_rate': {self.sample_rate}}}"


@dataclass
class Video:
    """VIDEO: frames, frame rate and optional audio (ComfyUI's VideoFromComponents)."""

    frames: list[Image.Image]
    fps: float
    audio: Audio | None = None

    def __str__(self) -> str:
        w, h = self.frames[0].size
        return f"<Video {len(self.frames)} frames {w}x{h} at {self.fps:g} fps{' with audio' if self.audio else ''}>"


def _av():
    try:
        import av
    except ImportError:
        raise RuntimeError(
            "the simulator's video and audio nodes need PyAV (FFmpeg bindings): pip install 'comfynb[media]'"
        ) from None
    return av


def media_metadata(ctx: ExecContext) -> dict[str, str]:
    """What ComfyUI writes into a video's or audio file's container metadata: ``prompt`` and each
    ``extra_pnginfo`` key as JSON (:mod:`comfynb.sim.metadata`): every media file of this module gets
    its tags from here."""
    return metadata.container_tags(*metadata.metadata_of(ctx))


# -- encoding --------------------------------------------------------------------------------


def _even(frame: Image.Image) -> Image.Image:
    """yuv420p needs even sides (ComfyUI's SaveVideo crops the same way)."""
    w, h = frame.size
    frame = frame.convert("RGB")
    return frame if w % 2 == 0 and h % 2 == 0 else frame.crop((0, 0, max(2, w - w % 2), max(2, h - h % 2)))


def encode_video(
    path: Path, video: Video, codec: str, audio_codec: str, *, options: dict | None = None, tags: dict | None = None
) -> None:
    """Write frames (and audio) into the container ``path``'s extension names."""
    av = _av()
    frames = [_even(f) for f in video.frames]
    # MP4 keeps custom tags (prompt, workflow) only with use_metadata_tags, which ComfyUI sets too
    container = {"options": {"movflags": "use_metadata_tags"}} if path.suffix.lower() in (".mp4", ".mov") else {}
    with av.open(str(path), "w", **container) as out:
        for key, value in (tags or {}).items():
            out.metadata[key] = value
        stream = out.add_stream(codec, rate=Fraction(video.fps).limit_denominator(1000))
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        if options:
            stream.options = options
        audio_stream = None
        if video.audio is not None:
            rate = 48000 if audio_codec == "libopus" else video.audio.sample_rate
            audio_stream = out.add_stream(audio_codec, rate=rate)
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_image(frame)))
        out.mux(stream.encode())
        if audio_stream is not None and video.audio is not None:
            _mux_audio(av, out, audio_stream, video.audio)


def _mux_audio(av, out, stream, audio: Audio) -> None:
    channels = audio.samples.shape[0]
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(audio.samples, dtype=np.float32),
        format="fltp",
        layout="mono" if channels == 1 else "stereo",
    )
    frame.sample_rate, frame.pts = audio.sample_rate, 0
    out.mux(stream.encode(frame))
    out.mux(stream.encode())


def encode_audio(path: Path, audio: Audio, fmt: str, tags: dict | None = None) -> None:
    av = _av()
    codec = {"flac": "flac", "mp3": "libmp3lame", "opus": "libopus", "wav": "pcm_s16le"}[fmt]
    with av.open(str(path), "w", format=fmt) as out:
        for key, value in (tags or {}).items():
            out.metadata[key] = value
        rate = 48000 if fmt == "opus" else audio.sample_rate
        _mux_audio(av, out, out.add_stream(codec, rate=rate), audio)


def decode_video(path: Path) -> Video:
    """Frames, frame rate and audio of a video file (LoadVideo)."""
    av = _av()
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"no video stream in {path.name}")
        vstream = container.streams.video[0]
        fps = float(vstream.average_rate or 24)
        frames = [frame.to_image() for frame in container.decode(video=0)]
    audio = decode_audio(path) if _has_audio(av, path) else None
    return Video(frames, fps, audio)


def _has_audio(av, path: Path) -> bool:
    with av.open(str(path)) as container:
        return bool(container.streams.audio)


def decode_audio(path: Path) -> Audio:
    """Samples and rate of an audio (or video) file's first audio stream (LoadAudio)."""
    av = _av()
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("No audio stream found in the file.")
        stream = container.streams.audio[0]
        rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
        resampler = av.AudioResampler(format="fltp", layout="mono" if channels == 1 else "stereo", rate=rate)
        chunks = [f.to_ndarray() for frame in container.decode(stream) for f in resampler.resample(frame)]
    if not chunks:
        raise ValueError("No audio frames decoded.")
    return Audio(np.concatenate(chunks, axis=1).astype(np.float32), rate)


def write_latent(path: Path, latent: Latent, tags: dict[str, str]) -> None:
    """A safetensors file like ComfyUI's SaveLatent (``latent_tensor`` + ``latent_format_version_0``),
    with deterministic values from the sampling parameters."""
    shape = [latent.batch_size, 4, latent.height // 8, latent.width // 8]
    seed = (latent.params or ({},))[0].get("seed", 0)
    data = np.random.default_rng(int(seed) % 2**32).standard_normal(shape).astype("<f4").tobytes()
    header = {
        "latent_tensor": {"dtype": "F32", "shape": shape, "data_offsets": [0, len(data)]},
        "latent_format_version_0": {"dtype": "F32", "shape": [0], "data_offsets": [len(data), len(data)]},
        "__metadata__": tags,
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


# -- nodes -------------------------------------------------------------------------------------


def _item(path: Path, subfolder: str, type_: str) -> dict:
    return {"filename": path.name, "subfolder": subfolder, "type": type_}


async def _create_video(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    return NodeResult((Video(list(i["images"].frames), float(i["fps"]), i.get("audio")),))


async def _save_video(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    video: Video = i["video"]
    path, sub = ctx.reserve(i["filename_prefix"], "output", "mp4", video.frames[0].size)
    encode_video(path, video, "libx264", "aac", tags=media_metadata(ctx))
    return NodeResult((), {"images": [_item(path, sub, "output")], "animated": [True]})


async def _save_webm(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    images: ImageBatch = i["images"]
    path, sub = ctx.reserve(i["filename_prefix"], "output", "webm", images.size)
    codec = {"vp9": "libvpx-vp9", "av1": "libsvtav1"}[i["codec"]]
    crf = str(int(i["crf"]))
    encode_video(
        path, Video(images.frames, float(i["fps"])), codec, "libopus", options={"crf": crf}, tags=media_metadata(ctx)
    )
    return NodeResult((), {"images": [_item(path, sub, "output")], "animated": [True]})


def _animated(ctx: ExecContext, i: dict, ext: str, **save: Any) -> NodeResult:
    images: ImageBatch = i["images"]
    path, sub = ctx.reserve(i["filename_prefix"], "output", ext, images.size)
    frames = images.frames
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000.0 / i["fps"]), **save)
    return NodeResult((), {"images": [_item(path, sub, "output")], "animated": [len(frames) > 1]})


async def _save_animated_webp(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    method = {"default": 4, "fastest": 0, "slowest": 6}[i["method"]]
    exif = metadata.webp_exif(*metadata.metadata_of(ctx))  # prompt in EXIF "Model", workflow in "Make"
    return _animated(ctx, i, "webp", lossless=i["lossless"], quality=i["quality"], method=method, exif=exif)


async def _save_animated_png(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    return _animated(ctx, i, "png", compress_level=i["compress_level"])


def _save_audio_files(ctx: ExecContext, audio: Audio, prefix: str, type_: str, fmt: str) -> list[dict]:
    path, sub = ctx.reserve(prefix.replace("%batch_num%", "0"), type_, fmt)
    encode_audio(path, audio, fmt, media_metadata(ctx))
    return [_item(path, sub, type_)]


async def _save_audio(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    return NodeResult((), {"audio": _save_audio_files(ctx, i["audio"], i["filename_prefix"], "output", "flac")})


async def _preview_audio(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    rng = random.Random(f"{ctx.prompt_id}:{ctx.node_id}")
    prefix = "ComfyUI_temp_" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
    return NodeResult((), {"audio": _save_audio_files(ctx, i["audio"], prefix, "temp", "flac")})


async def _empty_audio(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    length = round(i["duration"] * i["sample_rate"])
    return NodeResult((Audio(np.zeros((i["channels"], length), np.float32), i["sample_rate"]),))


async def _sine_wave(ctx: ExecContext, i: dict) -> NodeResult:
    """A tone: the simulator's stand-in for a model that makes sound."""
    await ctx.work()
    rate = i["sample_rate"]
    t = np.arange(round(i["seconds"] * rate)) / rate
    wave = (i["amplitude"] * np.sin(2 * math.pi * i["frequency"] * t)).astype(np.float32)
    return NodeResult((Audio(np.stack([wave] * i["channels"]), rate),))


def _text_of(source: Any) -> str:
    """PreviewAny's rendering: strings as they are, numbers with str(), the rest as JSON."""
    if source is None:
        return "None"
    if isinstance(source, str):
        return source
    if isinstance(source, (int, float, bool)):
        return str(source)
    try:
        return json.dumps(source)
    except (TypeError, ValueError):
        return str(source)


async def _preview_any(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    return NodeResult((), {"text": [_text_of(i.get("source"))]})


async def _primitive_string(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    return NodeResult((i["value"],))


async def _save_latent(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    path, sub = ctx.reserve(i["filename_prefix"], "output", "latent")
    write_latent(path, i["samples"], media_metadata(ctx))
    return NodeResult((), {"latents": [_item(path, sub, "output")]})


async def _load_video(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    return NodeResult((decode_video(ctx.resolve_input(i["file"])),))


async def _load_audio(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    return NodeResult((decode_audio(ctx.resolve_input(i["audio"])),))


async def _video_components(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    video: Video = i["video"]
    return NodeResult((ImageBatch(list(video.frames)), video.audio, video.fps))


async def _video_combine(ctx: ExecContext, i: dict) -> NodeResult:
    """VideoHelperSuite's VHS_VideoCombine: a first-frame PNG carrying the metadata, then the
    animation or video, reported under ``gifs`` with its MIME ``format``."""
    await ctx.work()
    images: ImageBatch = i["images"]
    frames = list(images.frames)
    if i["pingpong"]:
        frames += frames[-2:0:-1]
    type_ = "output" if i["save_output"] else "temp"
    kind, ext = i["format"].split("/")
    ext = {"h264-mp4": "mp4"}.get(ext, ext)
    path, sub = ctx.reserve(i["filename_prefix"], type_, ext, images.size, sep="")
    first = path.with_suffix(".png")
    frames[0].save(first, pnginfo=_pnginfo(media_metadata(ctx)), compress_level=4)
    rate = float(i["frame_rate"])
    if kind == "image":
        extra = {"disposal": 2} if ext == "gif" else {"lossless": True}
        frames[0].save(
            path, save_all=True, append_images=frames[1:], duration=round(1000 / rate), loop=i["loop_count"], **extra
        )
    else:
        codec, audio_codec = ("libx264", "aac") if ext == "mp4" else ("libvpx-vp9", "libopus")
        encode_video(path, Video(frames, rate, i.get("audio")), codec, audio_codec, tags=media_metadata(ctx))
    preview = {
        **_item(path, sub, type_),
        "format": i["format"],
        "frame_rate": rate,
        "workflow": first.name,
        "fullpath": str(path),
    }
    return NodeResult(((i["save_output"], [str(first), str(path)]),), {"gifs": [preview]})


def _pnginfo(text: dict[str, str]):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    return info


# -- loaders that list the input folder ---------------------------------------------------------


def _inputs_of(input_dir: Path | None, major: tuple[str, ...]) -> list[str]:
    if input_dir is None or not input_dir.is_dir():
        return []
    return sorted(
        f
        for f in os.listdir(input_dir)
        if (input_dir / f).is_file() and (mimetypes.guess_type(f)[0] or "").split("/")[0] in major
    )


class _Listing(NodeClass):
    """A loader whose COMBO lists the input folder at every read of ``info`` (like INPUT_TYPES())."""

    def __init__(self, input_dir: Path | None, field_name: str, major: tuple[str, ...], **kwargs) -> None:
        self._input_dir, self._field, self._major = input_dir, field_name, major
        super().__init__(**kwargs)

    @property
    def info(self) -> dict:
        self._info["input"]["required"][self._field][1]["options"] = _inputs_of(self._input_dir, self._major)
        return self._info

    @info.setter
    def info(self, value: dict) -> None:
        self._info = value


def _loader(name: str, display: str, category: str, field_name: str, upload: str, output: str, run, input_dir, major):
    def validate(inputs: dict) -> bool | str:
        value = str(inputs[field_name])
        if input_dir is None or _input_file(input_dir, value) is not None:
            return True
        return f"Invalid {'audio' if output == 'AUDIO' else 'video'} file: {value}"

    spec = {field_name: ["COMBO", {upload: True, "multiselect": False, "options": []}]}
    info = _info(
        name,
        display,
        category,
        spec,
        output=[output],
        python_module="comfy_extras.nodes_" + category.split("/")[-1],
        v3=True,
    )
    return _Listing(
        input_dir,
        field_name,
        major,
        name=name,
        info=info,
        run=run,
        validate=validate,
        validated_inputs=frozenset({field_name}),
    )


def _string(default: str, **extra: Any) -> list:
    return ["STRING", {"default": default, "multiline": False, **extra}]


def _float(default: float, lo: float, hi: float, step: float, **extra: Any) -> list:
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **extra}]


def _combo(options: list[str], **extra: Any) -> list:
    return ["COMBO", {**extra, "multiselect": False, "options": options}]


_PREFIX_TIP = (
    "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% "
    "or %Empty Latent Image.width% to include values from nodes."
)


def all_nodes(checkpoints: list[str] | None = None, input_dir: str | Path | None = None) -> dict[str, NodeClass]:
    """Every node class the simulator serves: :func:`~comfynb.sim.nodes.default_nodes` (images,
    SD-shaped graph) and the media nodes of this module."""
    media = media_nodes(Path(input_dir) if input_dir is not None else None)
    return {**default_nodes(checkpoints, input_dir), **{c.name: c for c in media}}


def media_nodes(input_dir: Path | None) -> list[NodeClass]:
    """The video, audio, text and latent node classes (see :func:`all_nodes`)."""
    video, images = "comfy_extras.nodes_video", "comfy_extras.nodes_images"
    audio_module = "comfy_extras.nodes_audio"
    return [
        NodeClass(
            "CreateVideo",
            _info(
                "CreateVideo",
                "Create Video",
                "image/video",
                {
                    "images": ["IMAGE", {"tooltip": "The images to create a video from."}],
                    "fps": _float(30.0, 1.0, 120.0, 1.0),
                },
                optional={"audio": ["AUDIO", {"tooltip": "The audio to add to the video."}]},
                output=["VIDEO"],
                description="Create a video from images.",
                python_module=video,
                v3=True,
            ),
            _create_video,
        ),
        NodeClass(
            "SaveVideo",
            _info(
                "SaveVideo",
                "Save Video",
                "image/video",
                {
                    "video": ["VIDEO", {"tooltip": "The video to save."}],
                    "filename_prefix": [
                        "STRING",
                        {"tooltip": _PREFIX_TIP, "default": "video/ComfyUI", "multiline": False},
                    ],
                    "format": _combo(["auto", "mp4"], tooltip="The format to save the video as.", default="auto"),
                    "codec": _combo(["auto", "h264"], tooltip="The codec to use for the video.", default="auto"),
                },
                hidden=dict(_HIDDEN),
                output_node=True,
                description="Saves the input images to your ComfyUI output directory.",
                python_module=video,
                v3=True,
            ),
            _save_video,
        ),
        NodeClass(
            "SaveWEBM",
            _info(
                "SaveWEBM",
                None,
                "image/video",
                {
                    "images": ["IMAGE", {}],
                    "filename_prefix": _string("ComfyUI"),
                    "codec": _combo(["vp9", "av1"]),
                    "fps": _float(24.0, 0.01, 1000.0, 0.01),
                    "crf": [
                        "FLOAT",
                        {
                            "tooltip": "Higher crf means lower quality with a smaller file size, lower crf means "
                            "higher quality higher filesize.",
                            "default": 32.0,
                            "min": 0,
                            "max": 63.0,
                            "step": 1,
                        },
                    ],
                },
                hidden=dict(_HIDDEN),
                output_node=True,
                python_module=video,
                v3=True,
                experimental=True,
            ),
            _save_webm,
        ),
        NodeClass(
            "SaveAnimatedWEBP",
            _info(
                "SaveAnimatedWEBP",
                None,
                "image/animation",
                {
                    "images": ["IMAGE", {}],
                    "filename_prefix": _string("ComfyUI"),
                    "fps": _float(6.0, 0.01, 1000.0, 0.01),
                    "lossless": ["BOOLEAN", {"default": True}],
                    "quality": ["INT", {"default": 80, "min": 0, "max": 100}],
                    "method": _combo(["default", "fastest", "slowest"]),
                },
                hidden=dict(_HIDDEN),
                output_node=True,
                python_module=images,
                v3=True,
            ),
            _save_animated_webp,
        ),
        NodeClass(
            "SaveAnimatedPNG",
            _info(
                "SaveAnimatedPNG",
                None,
                "image/animation",
                {
                    "images": ["IMAGE", {}],
                    "filename_prefix": _string("ComfyUI"),
                    "fps": _float(6.0, 0.01, 1000.0, 0.01),
                    "compress_level": ["INT", {"default": 4, "min": 0, "max": 9}],
                },
                hidden=dict(_HIDDEN),
                output_node=True,
                python_module=images,
                v3=True,
            ),
            _save_animated_png,
        ),
        NodeClass(
            "SaveAudio",
            _info(
                "SaveAudio",
                "Save Audio (FLAC)",
                "audio",
                {"audio": ["AUDIO", {}], "filename_prefix": _string("audio/ComfyUI")},
                hidden=dict(_HIDDEN),
                output_node=True,
                python_module=audio_module,
                v3=True,
            ),
            _save_audio,
        ),
        NodeClass(
            "PreviewAudio",
            _info(
                "PreviewAudio",
                "Preview Audio",
                "audio",
                {"audio": ["AUDIO", {}]},
                hidden=dict(_HIDDEN),
                output_node=True,
                python_module=audio_module,
                v3=True,
            ),
            _preview_audio,
        ),
        NodeClass(
            "EmptyAudio",
            _info(
                "EmptyAudio",
                "Empty Audio",
                "audio",
                {
                    "duration": _float(
                        60.0, 0.0, 0xFFFFFFFFFFFFFFFF, 0.01, tooltip="Duration of the empty audio clip in seconds"
                    ),
                    "sample_rate": [
                        "INT",
                        {"tooltip": "Sample rate of the empty audio clip.", "default": 44100, "min": 1, "max": 192000},
                    ],
                    "channels": [
                        "INT",
                        {
                            "tooltip": "Number of audio channels (1 for mono, 2 for stereo).",
                            "default": 2,
                            "min": 1,
                            "max": 2,
                        },
                    ],
                },
                output=["AUDIO"],
                python_module=audio_module,
                v3=True,
            ),
            _empty_audio,
        ),
        NodeClass(
            "SimSineWave",
            _info(
                "SimSineWave",
                "Sine Wave (simulator)",
                "audio",
                {
                    "frequency": _float(440.0, 1.0, 20000.0, 1.0),
                    "seconds": _float(1.0, 0.01, 600.0, 0.01),
                    "amplitude": _float(0.3, 0.0, 1.0, 0.01),
                    "sample_rate": ["INT", {"default": 44100, "min": 8000, "max": 192000}],
                    "channels": ["INT", {"default": 1, "min": 1, "max": 2}],
                },
                output=["AUDIO"],
                description="A pure tone: the simulator's model-free audio source.",
                python_module="custom_nodes.comfynb_sim",
            ),
            _sine_wave,
        ),
        NodeClass(
            "PreviewAny",
            _info(
                "PreviewAny",
                "Preview as Text",
                "utils",
                {"source": ["*", {}]},
                output_node=True,
                python_module="comfy_extras.nodes_preview_any",
            ),
            _preview_any,
        ),
        NodeClass(
            "PrimitiveString",
            _info(
                "PrimitiveString",
                "String",
                "utils/primitive",
                {"value": ["STRING", {"multiline": False}]},
                output=["STRING"],
                python_module="comfy_extras.nodes_primitive",
                v3=True,
            ),
            _primitive_string,
        ),
        NodeClass(
            "SaveLatent",
            _info(
                "SaveLatent",
                "SaveLatent",
                "_for_testing",
                {"samples": ["LATENT"], "filename_prefix": ["STRING", {"default": "latents/ComfyUI"}]},
                hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
                output_node=True,
            ),
            _save_latent,
        ),
        NodeClass(
            "GetVideoComponents",
            _info(
                "GetVideoComponents",
                "Get Video Components",
                "image/video",
                {"video": ["VIDEO", {"tooltip": "The video to extract components from."}]},
                output=["IMAGE", "AUDIO", "FLOAT"],
                output_name=["images", "audio", "fps"],
                description="Extracts all components from a video: frames, audio, and framerate.",
                python_module=video,
                v3=True,
            ),
            _video_components,
        ),
        _loader(
            "LoadVideo",
            "Load Video",
            "image/video",
            "file",
            "video_upload",
            "VIDEO",
            _load_video,
            input_dir,
            ("video",),
        ),
        _loader(
            "LoadAudio",
            "Load Audio",
            "audio",
            "audio",
            "audio_upload",
            "AUDIO",
            _load_audio,
            input_dir,
            ("audio", "video"),
        ),
        NodeClass(
            "VHS_VideoCombine",
            _info(
                "VHS_VideoCombine",
                "Video Combine 🎥🅥🅗🅢",
                "Video Helper Suite 🎥🅥🅗🅢",
                {
                    "images": ["IMAGE"],
                    "frame_rate": ["FLOAT", {"default": 8, "min": 1, "step": 1}],
                    "loop_count": ["INT", {"default": 0, "min": 0, "max": 100, "step": 1}],
                    "filename_prefix": ["STRING", {"default": "AnimateDiff"}],
                    "format": [
                        list(VHS_FORMATS),
                        {"formats": {"image/webp": [["lossless", "BOOLEAN", {"default": True}]]}},
                    ],
                    "pingpong": ["BOOLEAN", {"default": False}],
                    "save_output": ["BOOLEAN", {"default": True}],
                },
                optional={"audio": ["AUDIO"], "meta_batch": ["VHS_BatchManager"], "vae": ["VAE"]},
                hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
                output=["VHS_FILENAMES"],
                output_name=["Filenames"],
                output_node=True,
                python_module=_VHS_MODULE,
            ),
            _video_combine,
        ),
    ]


def video_bytes(frames: list[Image.Image], fps: float = 8.0, ext: str = "webm") -> bytes:
    """A small video file's bytes (for tests and notebooks that need an input video)."""
    import tempfile

    codec, audio_codec = ("libx264", "aac") if ext == "mp4" else ("libvpx-vp9", "libopus")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"v.{ext}"
        encode_video(path, Video(frames, fps), codec, audio_codec)
        return path.read_bytes()


def tone_bytes(frequency: float = 440.0, seconds: float = 0.5, rate: int = 44100, fmt: str = "flac") -> bytes:
    """A short tone's bytes in ``fmt`` (flac, wav, mp3, opus)."""
    import tempfile

    t = np.arange(round(seconds * rate)) / rate
    audio = Audio((0.3 * np.sin(2 * math.pi * frequency * t)).astype(np.float32)[None, :], rate)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"a.{fmt}"
        encode_audio(path, audio, fmt)
        return path.read_bytes()
