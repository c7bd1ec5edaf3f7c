"""Pixels for the simulator: image/mask batches, deterministic "generated" pictures, PNG text chunks.

A generated picture is a pure function of its generation parameters, so a test can tell from the
pixels (and from the ``comfynb_sim`` PNG chunk) which prompt produced which file.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, cast

from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter, ImageFont, PngImagePlugin

SIM_CHUNK = "comfynb_sim"
"""PNG text chunk holding the JSON generation parameters of a simulated picture."""


@dataclass
class _Frames:
    """A batch of equally sized frames, printed like the torch tensor it stands for (trace e's
    ``execution_error.current_inputs``)."""

    frames: list[Image.Image]

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].size


@dataclass
class ImageBatch(_Frames):
    """IMAGE: RGB frames of one size (ComfyUI's [B,H,W,3] float tensor) with per-frame generation params."""

    params: list[dict | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.params:
            self.params = [None] * len(self.frames)

    def __str__(self) -> str:
        w, h = self.size
        return tensor_str(
            (len(self.frames), h, w, 3),
            lambda i: cast(tuple[int, ...], self.frames[i[0]].getpixel((i[2], i[1])))[i[3]] / 255,
        )


@dataclass
class MaskBatch(_Frames):
    """MASK: single-channel frames ("L", 0..255 standing for 0..1), ComfyUI's [B,H,W] tensor."""

    def __str__(self) -> str:
        w, h = self.size
        return tensor_str((len(self.frames), h, w), lambda i: cast(int, self.frames[i[0]].getpixel((i[2], i[1]))) / 255)


# ---------------------------------------------------------------------------------------------
# torch-style tensor printing (precision 4, edgeitems 3, threshold 1000, linewidth 80)


def tensor_str(shape: Sequence[int], value: Callable[[tuple[int, ...]], float]) -> str:
    """Format like ``str(torch.tensor)`` so error reports look like the real server's."""
    summarize = math.prod(shape) > 1000

    def indices(n: int) -> list[int | None]:
        if summarize and n > 6:
            return [0, 1, 2, None, n - 3, n - 2, n - 1]
        return list(range(n))

    shown = [[i for i in indices(n) if i is not None] for n in shape]
    fmt, width = _formatter([value(ix) for ix in product(*shown)])

    def render(prefix: tuple[int, ...], indent: int) -> str:
        dim = len(shape) - len(prefix)
        items = indices(shape[len(prefix)])
        if dim == 1:
            data = [" ..." if i is None else fmt(value((*prefix, i))) for i in items]
            per_line = max(1, (80 - indent) // (width + 2))
            lines = [", ".join(data[k : k + per_line]) for k in range(0, len(data), per_line)]
            return "[" + ("," + "\n" + " " * (indent + 1)).join(lines) + "]"
        slices = ["..." if i is None else render((*prefix, i), indent + 1) for i in items]
        return "[" + ("," + "\n" * (dim - 1) + " " * (indent + 1)).join(slices) + "]"

    return "tensor(" + render((), len("tensor(")) + ")"


def _formatter(values: list[float]) -> tuple[Callable[[float], str], int]:
    nonzero = [v for v in values if v != 0 and math.isfinite(v)]
    int_mode = all(v == math.ceil(v) for v in nonzero)
    sci, width = False, 1
    if nonzero:
        top, low = max(abs(v) for v in nonzero), min(abs(v) for v in nonzero)
        sci = top / low > 1000.0 or top > 1.0e8 or (not int_mode and low < 1.0e-4)
        if sci:
            width = max(len(f"{v:.4e}") for v in nonzero)
        elif int_mode:
            width = max(len(f"{v:.0f}") + 1 for v in nonzero)
        else:
            width = max(len(f"{v:.4f}") for v in nonzero)

    def fmt(v: float) -> str:
        if sci:
            s = f"{v:{width}.4e}"
        elif int_mode:
            s = f"{v:.0f}" + ("." if math.isfinite(v) else "")
        else:
            s = f"{v:.4f}"
        return s.rjust(width)

    return fmt, width


# ---------------------------------------------------------------------------------------------
# deterministic pictures


def image_size(params: dict) -> tuple[int, int]:
    """Pixel size of a decoded latent: ComfyUI's latent is 1/8 of width and height, rounded down."""
    return max(8, int(params["width"]) // 8 * 8), max(8, int(params["height"]) // 8 * 8)


def render(params: dict, size: tuple[int, int] | None = None) -> Image.Image:
    """Draw the picture for one set of generation parameters.

    seed (+ batch_index) -> palette and shapes; positive text -> background pattern;
    negative text -> vignette; steps -> detail (more shapes, finer pattern, sharper);
    cfg -> contrast and saturation; sampler/scheduler -> small shape jitter;
    denoise -> how far the picture emerges from grey. Resolution-independent, so a small
    render is a faithful preview of the full one.
    """
    w, h = size or image_size(params)
    seed = int(params.get("seed", 0))
    steps = max(1, int(params.get("steps", 20)))
    cfg = float(params.get("cfg", 8.0))
    denoise = float(params.get("denoise", 1.0))
    positive = str(params.get("positive", ""))
    negative = str(params.get("negative", ""))
    rng = random.Random(f"seed:{seed}:{params.get('batch_index', 0)}")
    text_rng = random.Random("text:" + positive)
    jitter_rng = random.Random(f"sampler:{params.get('sampler_name')}:{params.get('scheduler')}")

    corners = Image.new("RGB", (2, 2))
    corners.putdata([_colour(rng) for _ in range(4)])
    img = corners.resize((w, h), Image.Resampling.BILINEAR)

    detail = 1.0 + min(steps, 60) / 20
    pattern = _pattern(text_rng, detail).resize((w, h), Image.Resampling.BILINEAR)
    strength = text_rng.uniform(0.45, 0.75)
    img = Image.composite(Image.new("RGB", (w, h), _colour(text_rng)), img, pattern.point(lambda v: int(v * strength)))

    overlay = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    unit = min(w, h)
    for _ in range(4 + min(steps, 60) // 4):
        cx = (rng.random() + jitter_rng.uniform(-0.03, 0.03)) * w
        cy = (rng.random() + jitter_rng.uniform(-0.03, 0.03)) * h
        r = unit * rng.uniform(0.06, 0.3) / math.sqrt(detail)
        fill = (*_colour(rng, value=(0.3, 1.0), saturation=(0.7, 1.0)), rng.randint(160, 240))
        kind = rng.randrange(3)
        if kind == 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif kind == 1:
            draw.rectangle((cx - r, cy - r * 0.6, cx + r, cy + r * 0.6), fill=fill)
        else:
            a = rng.uniform(0, 2 * math.pi)
            draw.polygon(
                [(cx + r * math.cos(a + k * 2.094), cy + r * math.sin(a + k * 2.094)) for k in range(3)], fill=fill
            )
    img = Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")

    if negative:
        neg_rng = random.Random("neg:" + negative)
        vignette = Image.radial_gradient("L").resize((w, h), Image.Resampling.BILINEAR)
        amount = neg_rng.uniform(0.25, 0.5)
        img = Image.composite(
            Image.new("RGB", (w, h), _colour(neg_rng, value=(0.1, 0.35))),
            img,
            vignette.point(lambda v: int(v * amount)),
        )

    if steps < 10:
        img = img.filter(ImageFilter.GaussianBlur((10 - steps) * unit / 256))
    img = ImageEnhance.Contrast(img).enhance(min(3.0, max(0.3, 0.35 + 0.12 * cfg)))
    img = ImageEnhance.Color(img).enhance(min(3.0, max(0.2, 0.3 + 0.12 * cfg)))
    if denoise < 1.0:
        img = Image.blend(Image.new("RGB", (w, h), (128, 128, 128)), img, 0.25 + 0.75 * max(0.0, denoise))
    if w >= 192 and h >= 128:
        _caption(img, f"seed {seed} · cfg {cfg:g} · {steps} steps", positive)
    return img


def render_preview(params: dict, step: int, steps: int, base: Image.Image | None = None) -> Image.Image:
    """Sampler preview after `step` of `steps`: the picture emerging from seeded noise, 1/4 size."""
    if base is None:
        base = render(params, preview_size(params))
    noise_rng = random.Random(f"noise:{params.get('seed', 0)}:{params.get('batch_index', 0)}:{step}")
    noise = Image.frombytes("RGB", base.size, noise_rng.randbytes(base.width * base.height * 3))
    return Image.blend(noise, base, min(1.0, step / max(1, steps)) ** 0.5)


def preview_size(params: dict) -> tuple[int, int]:
    w, h = image_size(params)
    scale = min(0.25, 512 / max(w, h))
    return max(8, round(w * scale)), max(8, round(h * scale))


def _colour(
    rng: random.Random, value: tuple[float, float] = (0.45, 0.95), saturation: tuple[float, float] = (0.45, 0.95)
) -> tuple[int, int, int]:
    hue, sat, val = rng.random(), rng.uniform(*saturation), rng.uniform(*value)
    i = int(hue * 6) % 6
    f = hue * 6 - int(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    r, g, b = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return round(r * 255), round(g * 255), round(b * 255)


def _pattern(rng: random.Random, detail: float) -> Image.Image:
    """A 256x256 "L" pattern chosen by the prompt text: stripes, rings, checker or plaid."""
    kind = rng.choice(("stripes", "rings", "checker", "plaid"))
    freq = rng.uniform(2.0, 5.0) * detail
    angle = rng.uniform(0, 180)
    phase = rng.uniform(0, 2 * math.pi)
    lut = [round(127.5 + 127.5 * math.sin(2 * math.pi * freq * i / 255 + phase)) for i in range(256)]

    def stripes(a: float) -> Image.Image:
        big = Image.linear_gradient("L").resize((364, 364), Image.Resampling.BILINEAR)
        return big.rotate(a, Image.Resampling.BILINEAR).crop((54, 54, 310, 310)).point(lut)

    if kind == "stripes":
        return stripes(angle)
    if kind == "rings":
        ox, oy = rng.randint(0, 256), rng.randint(0, 256)
        big = Image.radial_gradient("L").resize((512, 512), Image.Resampling.BILINEAR)
        return big.crop((ox, oy, ox + 256, oy + 256)).point(lut)
    if kind == "checker":
        return ImageChops.multiply(stripes(angle), stripes(angle + 90))
    return ImageChops.add(stripes(angle), stripes(angle + 60), scale=2)


def _caption(img: Image.Image, line1: str, line2: str) -> None:
    size = max(10, img.height // 32)
    font = ImageFont.load_default(size=size)
    band = Image.new("RGBA", (img.width, size * 3), (0, 0, 0, 150))
    draw = ImageDraw.Draw(band)
    draw.text((size // 2, size // 4), line1, font=font, fill=(255, 255, 255, 255))
    text = line2.replace("\n", " ")
    limit = max(8, int(img.width / (size * 0.55)))
    draw.text(
        (size // 2, size * 3 // 2),
        text if len(text) <= limit else text[: limit - 1] + "…",
        font=font,
        fill=(230, 230, 230, 255),
    )
    img.paste(band.convert("RGB"), (0, img.height - band.height), band)


def digest(image: Image.Image) -> str:
    """Short hash of the pixels, for comparing pictures in tests."""
    return hashlib.sha256(image.tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# PNG text chunks


def encode_png(image: Image.Image, text: dict[str, str] | None = None, compress_level: int = 4) -> bytes:
    """PNG bytes with one text chunk per item (ComfyUI writes "prompt" and "workflow" this way)."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


def png_text(source: bytes | str | Path | Image.Image) -> dict[str, str]:
    """All text chunks of a PNG given as bytes, a path or an opened image."""
    if isinstance(source, Image.Image):
        chunks = cast(dict[str, Any], getattr(source, "text", None) or source.info)  # a PNG's keys are str
        return {k: v for k, v in chunks.items() if isinstance(v, str)}
    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
        return png_text(im)


def read_params(source: bytes | str | Path | Image.Image) -> dict:
    """Generation parameters stored by the simulator in a PNG; {} for pictures it did not generate."""
    raw = png_text(source).get(SIM_CHUNK)
    return json.loads(raw) if raw else {}
