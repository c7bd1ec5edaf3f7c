"""The simulator's node library: ComfyUI node classes with their real /object_info entries.

Each node is a `NodeClass` whose `info` is exactly what ``GET /object_info/{name}`` returns and whose
`run` computes outputs with Pillow instead of torch. The engine (engine.py) owns scheduling,
caching and messages; nodes talk to it only through the `ExecContext` protocol below.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, ImageFilter, ImageOps, ImageSequence

from . import metadata
from .images import SIM_CHUNK, ImageBatch, MaskBatch, image_size, preview_size, render, render_preview
from .ledger import RUN_CHUNK

MAX_RESOLUTION = 16384

DEFAULT_CHECKPOINTS = ["random_sd15_tiny.safetensors", "v1-5-pruned-emaonly-fp16.safetensors"]

# comfy.samplers.KSampler.SAMPLERS / SCHEDULERS of ComfyUI 0.8.0
SAMPLERS = [
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "exp_heun_2_x0",
    "exp_heun_2_x0_sde",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "res_multistep_cfg_pp",
    "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp",
    "gradient_estimation",
    "gradient_estimation_cfg_pp",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
]
SCHEDULERS = [
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
]
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
_RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class Interrupted(Exception):
    """Raised by `ExecContext.progress` once the prompt is interrupted (-> execution_interrupted)."""


@dataclass
class NodeResult:
    outputs: tuple = ()  # one value per output slot (opaque to the engine)
    ui: dict | None = None  # `executed`.output and history outputs; None = no `executed` message


@dataclass
class NodeClass:
    name: str
    info: dict
    run: Callable[[ExecContext, dict], Awaitable[NodeResult]]
    validate: Callable[[dict], bool | str] | None = None
    """Like ComfyUI's VALIDATE_INPUTS: gets the literal values of `validated_inputs`; True or a reason."""
    validated_inputs: frozenset[str] = frozenset()
    """Inputs checked by `validate` instead of the built-in min/max/list checks."""
    is_changed: Callable[[dict], Any] | None = None
    """Like ComfyUI's IS_CHANGED: its result (from the literal inputs) belongs in the cache key."""

    @property
    def output_node(self) -> bool:
        return bool(self.info["output_node"])


class ExecContext(Protocol):
    """What a node may ask of the engine while it runs (implemented in engine.py)."""

    prompt_id: str
    node_id: str
    prompt: dict  # the whole API-format graph (SaveImage embeds it in PNGs)
    extra_data: dict
    input_dir: Path
    output_dir: Path
    temp_dir: Path

    async def work(self, seconds: float | None = None) -> None: ...
    async def progress(self, value: int, max: int, preview: Image.Image | None = None) -> None: ...
    async def send_image(self, image: Image.Image, fmt: str = "PNG") -> None: ...
    def save_image(
        self, image: Image.Image, filename_prefix: str, type: str = "output", text: dict[str, str] | None = None
    ) -> dict: ...
    def reserve(
        self, filename_prefix: str, type: str, ext: str, size: tuple[int, int] = (0, 0), sep: str = "_"
    ) -> tuple[Path, str]: ...
    def resolve_input(self, name: str) -> Path: ...


# ---------------------------------------------------------------------------------------------
# data flowing between the SD-shaped nodes


@dataclass(frozen=True)
class ModelPart:
    """MODEL, CLIP or VAE of a simulated checkpoint."""

    kind: str
    ckpt_name: str


@dataclass(frozen=True)
class Conditioning:
    text: str
    ckpt_name: str


@dataclass(frozen=True)
class Latent:
    """LATENT: size and batch; after sampling, the generation params of each batch item."""

    width: int
    height: int
    batch_size: int
    params: tuple[dict, ...] | None = None


# ---------------------------------------------------------------------------------------------
# object_info entries


def _info(
    name: str,
    display_name: str | None,
    category: str,
    required: dict,
    *,
    optional: dict | None = None,
    hidden: dict | None = None,
    output: Sequence[str] = (),
    output_name: list[str] | None = None,
    output_node: bool = False,
    description: str = "",
    python_module: str = "nodes",
    output_tooltips: Sequence[str | None] | None = None,
    v3: bool = False,
    experimental: bool = False,
) -> dict:
    """An /object_info entry as server.py builds it (V1 nodes) or as V3 schemas serialise."""
    inputs = {"required": required}
    if optional:
        inputs["optional"] = optional
    if hidden:
        inputs["hidden"] = hidden
    info = {
        "input": inputs,
        "input_order": {key: list(value) for key, value in inputs.items()},
        "output": list(output),
        "output_is_list": [False] * len(output),
        "output_name": list(output_name or output),
        "name": name,
        "display_name": display_name,
        "description": description,
        "python_module": python_module,
        "category": category,
        "output_node": output_node,
    }
    if v3:  # keys in the order of ComfyUI 0.8.0's V3 schemas (see the recorded /object_info)
        head = {k: info.pop(k) for k in ("input", "input_order", "output", "output_is_list", "output_name")}
        tooltips = {"output_tooltips": output_tooltips or [None] * len(output), "output_matchtypes": None}
        info = {**head, **tooltips, **info, "deprecated": False, "experimental": experimental, "api_node": False}
    elif output_tooltips:
        info["output_tooltips"] = output_tooltips
    return info


def _int(default: int, lo: int, hi: int, step: int | None = 1, **extra) -> list:
    opts = {"default": default, "min": lo, "max": hi}
    if step is not None:
        opts["step"] = step
    return ["INT", {**opts, **extra}]


_HIDDEN_PNG = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
_SAVE_DESCRIPTION = "Saves the input images to your ComfyUI output directory."


# ---------------------------------------------------------------------------------------------
# model-free image nodes


async def _empty_image(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    c = i["color"]
    frame = Image.new("RGB", (i["width"], i["height"]), ((c >> 16) & 0xFF, (c >> 8) & 0xFF, c & 0xFF))
    return NodeResult((ImageBatch([frame] * i["batch_size"]),))


async def _image_blur(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    images: ImageBatch = i["image"]
    blur = ImageFilter.GaussianBlur(i["sigma"])
    return NodeResult((ImageBatch([f.filter(blur) for f in images.frames], list(images.params)),))


async def _image_invert(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    images: ImageBatch = i["image"]
    return NodeResult((ImageBatch([ImageOps.invert(f) for f in images.frames], list(images.params)),))


def _upscale(frame: Image.Image, width: int, height: int, method: str, crop: str) -> Image.Image:
    """comfy.utils.common_upscale: optional centre crop to the target aspect, then resize."""
    if crop == "center":
        ow, oh = frame.size
        old, new = ow / oh, width / height
        x = round((ow - ow * (new / old)) / 2) if old > new else 0
        y = round((oh - oh * (old / new)) / 2) if old < new else 0
        frame = frame.crop((x, y, ow - x, oh - y))
    return frame.resize((width, height), _RESAMPLE.get(method, Image.Resampling.BILINEAR))


async def _image_scale(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    images: ImageBatch = i["image"]
    width, height = i["width"], i["height"]
    if width == 0 and height == 0:
        return NodeResult((images,))
    ow, oh = images.size
    if width == 0:
        width = max(1, round(ow * height / oh))
    elif height == 0:
        height = max(1, round(oh * width / ow))
    frames = [_upscale(f, width, height, i["upscale_method"], i["crop"]) for f in images.frames]
    return NodeResult((ImageBatch(frames, list(images.params)),))


async def _image_batch(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    first: ImageBatch = i["image1"]
    second: ImageBatch = i["image2"]
    frames = second.frames
    if second.size != first.size:
        frames = [_upscale(f, *first.size, "bilinear", "center") for f in frames]
    return NodeResult((ImageBatch(first.frames + frames, list(first.params) + list(second.params)),))


async def _image_to_mask(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    images: ImageBatch = i["image"]
    index = ["red", "green", "blue", "alpha"].index(i["channel"])
    if index >= 3:  # IMAGE tensors are [B,H,W,3]: the real node fails the same way
        raise IndexError(f"index {index} is out of bounds for dimension 3 with size 3")
    return NodeResult((MaskBatch([f.getchannel(index) for f in images.frames]),))


async def _mask_to_image(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    masks: MaskBatch = i["mask"]
    return NodeResult((ImageBatch([m.convert("RGB") for m in masks.frames]),))


async def _solid_mask(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    return NodeResult((MaskBatch([Image.new("L", (i["width"], i["height"]), round(i["value"] * 255))]),))


def _png_text(ctx: ExecContext) -> dict[str, str]:
    """ComfyUI's PNG metadata: "prompt" plus one chunk per extra_pnginfo key (e.g. "workflow")."""
    return metadata.text_chunks(*metadata.metadata_of(ctx))


def _save_batch(ctx: ExecContext, images: ImageBatch, prefix: str, kind: str) -> list[dict]:
    base = _png_text(ctx)
    run_id = getattr(ctx, "run_id", None)
    if run_id is not None:  # which execution saved it: counts executions across restarts (ledger.py)
        base[RUN_CHUNK] = json.dumps({"prompt_id": ctx.prompt_id, "run": run_id})
    saved = []
    for n, (frame, params) in enumerate(zip(images.frames, images.params)):
        text = dict(base)
        if params is not None:
            text[SIM_CHUNK] = json.dumps(params)
        saved.append(ctx.save_image(frame, prefix.replace("%batch_num%", str(n)), kind, text))
    return saved


async def _save_image(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    return NodeResult((), {"images": _save_batch(ctx, i["images"], i["filename_prefix"], "output")})


async def _preview_image(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    # ComfyUI: "ComfyUI_temp_" + 5 random letters from this (sic) alphabet, per node instance
    rng = random.Random(f"{ctx.prompt_id}:{ctx.node_id}")
    prefix = "ComfyUI_temp_" + "".join(rng.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    return NodeResult((), {"images": _save_batch(ctx, i["images"], prefix, "temp")})


async def _save_image_websocket(ctx: ExecContext, i: dict) -> NodeResult:
    """custom_nodes/websocket_image_save.py: each image rides on progress i of n (trace i)."""
    await ctx.work()
    frames = i["images"].frames
    for step, frame in enumerate(frames):
        await ctx.send_image(frame, "PNG")  # attached to the progress message that follows
        await ctx.progress(step, len(frames))
    return NodeResult((), None)


def _input_file(input_dir: Path, name: str) -> Path | None:
    """folder_paths.get_annotated_filepath: "sub/x.png" or "x.png [input]" in the input dir,
    "sub/x.png [output]" / "[temp]" in the sibling folders (chaining a job's output into the next)."""
    base = input_dir
    for kind in ("input", "output", "temp"):
        if name.endswith(f" [{kind}]"):
            name, base = name[: -len(kind) - 3], input_dir.parent / kind
    path = (base / name).resolve()
    if base.resolve() not in path.parents or not path.is_file():
        return None
    return path


def _list_input_images(input_dir: Path | None) -> list[str]:
    if input_dir is None or not input_dir.is_dir():
        return []
    return sorted(
        f
        for f in os.listdir(input_dir)
        if (input_dir / f).is_file() and (mimetypes.guess_type(f)[0] or "").startswith("image/")
    )


async def _load_image(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    frames: list[Image.Image] = []
    masks: list[Image.Image] = []
    with Image.open(ctx.resolve_input(i["image"])) as img:
        for frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(frame)
            rgb = frame.convert("RGB")
            if frames and rgb.size != frames[0].size:
                continue
            frames.append(rgb)
            if "A" in frame.getbands():
                masks.append(ImageOps.invert(frame.getchannel("A")))
            elif frame.mode == "P" and "transparency" in frame.info:
                masks.append(ImageOps.invert(frame.convert("RGBA").getchannel("A")))
            else:
                masks.append(Image.new("L", (64, 64), 0))
    return NodeResult((ImageBatch(frames), MaskBatch(masks)))


class _LoadImageClass(NodeClass):
    """LoadImage lists the input directory at every read of `info`, like ComfyUI's INPUT_TYPES()."""

    def __init__(self, input_dir: Path | None, **kwargs) -> None:
        self._input_dir = input_dir
        super().__init__(**kwargs)

    @property
    def info(self) -> dict:
        self._info["input"]["required"]["image"][0] = _list_input_images(self._input_dir)
        return self._info

    @info.setter
    def info(self, value: dict) -> None:
        self._info = value


def _load_image_node(input_dir: Path | None) -> NodeClass:
    def validate(inputs: dict) -> bool | str:
        if input_dir is None or _input_file(input_dir, inputs["image"]) is not None:
            return True
        return f"Invalid image file: {inputs['image']}"

    def is_changed(inputs: dict) -> str | None:
        path = _input_file(input_dir, str(inputs.get("image", ""))) if input_dir is not None else None
        return hashlib.sha256(path.read_bytes()).hexdigest() if path else None

    info = _info("LoadImage", "Load Image", "image", {"image": [[], {"image_upload": True}]}, output=["IMAGE", "MASK"])
    return _LoadImageClass(
        input_dir,
        name="LoadImage",
        info=info,
        run=_load_image,
        validate=validate,
        validated_inputs=frozenset({"image"}),
        is_changed=is_changed,
    )


# ---------------------------------------------------------------------------------------------
# SD-shaped nodes


async def _checkpoint_loader(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    name = i["ckpt_name"]
    return NodeResult((ModelPart("MODEL", name), ModelPart("CLIP", name), ModelPart("VAE", name)))


async def _clip_text_encode(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    return NodeResult((Conditioning(i["text"], i["clip"].ckpt_name),))


async def _empty_latent(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    return NodeResult((Latent(i["width"], i["height"], i["batch_size"]),))


async def _ksampler(ctx: ExecContext, i: dict) -> NodeResult:
    """One progress message per step (1..steps), each with a preview of the emerging picture."""
    await ctx.work()
    latent: Latent = i["latent_image"]
    params = tuple(
        {
            "seed": i["seed"],
            "steps": i["steps"],
            "cfg": i["cfg"],
            "sampler_name": i["sampler_name"],
            "scheduler": i["scheduler"],
            "denoise": i["denoise"],
            "positive": i["positive"].text,
            "negative": i["negative"].text,
            "width": latent.width,
            "height": latent.height,
            "batch_index": b,
            "ckpt_name": i["model"].ckpt_name,
        }
        for b in range(latent.batch_size)
    )
    base = render(params[0], preview_size(params[0]))
    for step in range(1, i["steps"] + 1):
        await ctx.progress(step, i["steps"], preview=render_preview(params[0], step, i["steps"], base))
    return NodeResult((Latent(latent.width, latent.height, latent.batch_size, params),))


async def _vae_decode(ctx: ExecContext, i: dict) -> NodeResult:
    await ctx.work()
    latent: Latent = i["samples"]
    if latent.params is None:  # decoding an unsampled latent gives a flat grey picture
        size = image_size({"width": latent.width, "height": latent.height})
        return NodeResult((ImageBatch([Image.new("RGB", size, (128, 128, 128))] * latent.batch_size),))
    return NodeResult((ImageBatch([render(p) for p in latent.params], list(latent.params)),))


# ---------------------------------------------------------------------------------------------


def default_nodes(checkpoints: list[str] | None = None, input_dir: str | Path | None = None) -> dict[str, NodeClass]:
    """All simulated node classes; CheckpointLoaderSimple lists `checkpoints`, LoadImage `input_dir`."""
    ckpts = sorted(checkpoints) if checkpoints else list(DEFAULT_CHECKPOINTS)
    image = ["IMAGE"]
    ext_post, ext_mask = "comfy_extras.nodes_post_processing", "comfy_extras.nodes_mask"
    classes = [
        NodeClass(
            "EmptyImage",
            _info(
                "EmptyImage",
                "EmptyImage",
                "image",
                {
                    "width": _int(512, 1, MAX_RESOLUTION),
                    "height": _int(512, 1, MAX_RESOLUTION),
                    "batch_size": _int(1, 1, 4096, None),
                    "color": _int(0, 0, 0xFFFFFF, display="color"),
                },
                output=image,
            ),
            _empty_image,
        ),
        NodeClass(
            "ImageBlur",
            _info(
                "ImageBlur",
                "Image Blur",
                "image/postprocessing",
                {
                    "image": ["IMAGE"],
                    "blur_radius": _int(1, 1, 31),
                    "sigma": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}],
                },
                output=image,
                python_module=ext_post,
            ),
            _image_blur,
        ),
        NodeClass(
            "ImageInvert",
            _info("ImageInvert", "Invert Image", "image", {"image": ["IMAGE"]}, output=image),
            _image_invert,
        ),
        NodeClass(
            "ImageScale",
            _info(
                "ImageScale",
                "Upscale Image",
                "image/upscaling",
                {
                    "image": ["IMAGE"],
                    "upscale_method": [list(UPSCALE_METHODS)],
                    "width": _int(512, 0, MAX_RESOLUTION),
                    "height": _int(512, 0, MAX_RESOLUTION),
                    "crop": [["disabled", "center"]],
                },
                output=image,
            ),
            _image_scale,
        ),
        NodeClass(
            "ImageBatch",
            _info("ImageBatch", "Batch Images", "image", {"image1": ["IMAGE"], "image2": ["IMAGE"]}, output=image),
            _image_batch,
        ),
        NodeClass(
            "ImageToMask",
            _info(
                "ImageToMask",
                "Convert Image to Mask",
                "mask",
                {
                    "image": ["IMAGE", {}],
                    "channel": ["COMBO", {"options": ["red", "green", "blue", "alpha"]}],
                },
                output=["MASK"],
                python_module=ext_mask,
                v3=True,
            ),
            _image_to_mask,
        ),
        NodeClass(
            "MaskToImage",
            _info(
                "MaskToImage",
                "Convert Mask to Image",
                "mask",
                {"mask": ["MASK", {}]},
                output=image,
                python_module=ext_mask,
                v3=True,
            ),
            _mask_to_image,
        ),
        NodeClass(
            "SolidMask",
            _info(
                "SolidMask",
                "SolidMask",
                "mask",
                {
                    "value": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
                    "width": _int(512, 1, MAX_RESOLUTION),
                    "height": _int(512, 1, MAX_RESOLUTION),
                },
                output=["MASK"],
                python_module=ext_mask,
                v3=True,
            ),
            _solid_mask,
        ),
        NodeClass(
            "SaveImage",
            _info(
                "SaveImage",
                "Save Image",
                "image",
                {
                    "images": ["IMAGE", {"tooltip": "The images to save."}],
                    "filename_prefix": [
                        "STRING",
                        {
                            "default": "ComfyUI",
                            "tooltip": (
                                "The prefix for the file to save. This may include formatting information such as "
                                "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."
                            ),
                        },
                    ],
                },
                hidden=dict(_HIDDEN_PNG),
                output_node=True,
                description=_SAVE_DESCRIPTION,
            ),
            _save_image,
        ),
        NodeClass(
            "PreviewImage",
            _info(
                "PreviewImage",
                "Preview Image",
                "image",
                {"images": ["IMAGE"]},
                hidden=dict(_HIDDEN_PNG),
                output_node=True,
                description=_SAVE_DESCRIPTION,
            ),
            _preview_image,
        ),
        NodeClass(
            "SaveImageWebsocket",
            _info(
                "SaveImageWebsocket",
                "SaveImageWebsocket",
                "api node/image",
                {"images": ["IMAGE"]},
                output_node=True,
                python_module="custom_nodes.websocket_image_save",
            ),
            _save_image_websocket,
            is_changed=lambda inputs: time.time(),
        ),
        _load_image_node(Path(input_dir) if input_dir is not None else None),
        NodeClass(
            "CheckpointLoaderSimple",
            _info(
                "CheckpointLoaderSimple",
                "Load Checkpoint",
                "loaders",
                {"ckpt_name": [ckpts, {"tooltip": "The name of the checkpoint (model) to load."}]},
                output=["MODEL", "CLIP", "VAE"],
                description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
                output_tooltips=[
                    "The model used for denoising latents.",
                    "The CLIP model used for encoding text prompts.",
                    "The VAE model used for encoding and decoding images to and from latent space.",
                ],
            ),
            _checkpoint_loader,
        ),
        NodeClass(
            "CLIPTextEncode",
            _info(
                "CLIPTextEncode",
                "CLIP Text Encode (Prompt)",
                "conditioning",
                {
                    "text": [
                        "STRING",
                        {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."},
                    ],
                    "clip": ["CLIP", {"tooltip": "The CLIP model used for encoding the text."}],
                },
                output=["CONDITIONING"],
                description=(
                    "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
                    "diffusion model towards generating specific images."
                ),
                output_tooltips=["A conditioning containing the embedded text used to guide the diffusion model."],
            ),
            _clip_text_encode,
        ),
        NodeClass(
            "EmptyLatentImage",
            _info(
                "EmptyLatentImage",
                "Empty Latent Image",
                "latent",
                {
                    "width": _int(512, 16, MAX_RESOLUTION, 8, tooltip="The width of the latent images in pixels."),
                    "height": _int(512, 16, MAX_RESOLUTION, 8, tooltip="The height of the latent images in pixels."),
                    "batch_size": _int(1, 1, 4096, None, tooltip="The number of latent images in the batch."),
                },
                output=["LATENT"],
                description="Create a new batch of empty latent images to be denoised via sampling.",
                output_tooltips=["The empty latent image batch."],
            ),
            _empty_latent,
        ),
        NodeClass(
            "KSampler",
            _info(
                "KSampler",
                "KSampler",
                "sampling",
                {
                    "model": ["MODEL", {"tooltip": "The model used for denoising the input latent."}],
                    "seed": _int(
                        0,
                        0,
                        0xFFFFFFFFFFFFFFFF,
                        None,
                        control_after_generate=True,
                        tooltip="The random seed used for creating the noise.",
                    ),
                    "steps": _int(20, 1, 10000, None, tooltip="The number of steps used in the denoising process."),
                    "cfg": [
                        "FLOAT",
                        {
                            "default": 8.0,
                            "min": 0.0,
                            "max": 100.0,
                            "step": 0.1,
                            "round": 0.01,
                            "tooltip": (
                                "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher "
                                "values result in images more closely matching the prompt however too high values will "
                                "negatively impact quality."
                            ),
                        },
                    ],
                    "sampler_name": [
                        list(SAMPLERS),
                        {
                            "tooltip": (
                                "The algorithm used when sampling, this can affect the quality, speed, and style of the "
                                "generated output."
                            )
                        },
                    ],
                    "scheduler": [
                        list(SCHEDULERS),
                        {"tooltip": "The scheduler controls how noise is gradually removed to form the image."},
                    ],
                    "positive": [
                        "CONDITIONING",
                        {"tooltip": "The conditioning describing the attributes you want to include in the image."},
                    ],
                    "negative": [
                        "CONDITIONING",
                        {"tooltip": "The conditioning describing the attributes you want to exclude from the image."},
                    ],
                    "latent_image": ["LATENT", {"tooltip": "The latent image to denoise."}],
                    "denoise": [
                        "FLOAT",
                        {
                            "default": 1.0,
                            "min": 0.0,
                            "max": 1.0,
                            "step": 0.01,
                            "tooltip": (
                                "The amount of denoising applied, lower values will maintain the structure of the initial "
                                "image allowing for image to image sampling."
                            ),
                        },
                    ],
                },
                output=["LATENT"],
                description="Uses the provided model, positive and negative conditioning to denoise the latent image.",
                output_tooltips=["The denoised latent."],
            ),
            _ksampler,
        ),
        NodeClass(
            "VAEDecode",
            _info(
                "VAEDecode",
                "VAE Decode",
                "latent",
                {
                    "samples": ["LATENT", {"tooltip": "The latent to be decoded."}],
                    "vae": ["VAE", {"tooltip": "The VAE model used for decoding the latent."}],
                },
                output=image,
                description="Decodes latent images back into pixel space images.",
                output_tooltips=["The decoded image."],
            ),
            _vae_decode,
        ),
    ]
    return {c.name: c for c in classes}
