"""The simulator's node library, run without the engine through an honest test-local ExecContext."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from comfynb.sim.images import ImageBatch, MaskBatch, digest, encode_png, png_text, read_params, render
from comfynb.sim.library import load_workflow, workflow_names
from comfynb.sim.nodes import SAMPLERS, SCHEDULERS, Interrupted, NodeResult, default_nodes
from comfynb.sim.validation import validate_prompt

SHARED_WORKFLOWS = Path("/work/shared/workflows")


class Ctx:
    """ExecContext implemented as the contract says, writing real files under tmp_path."""

    def __init__(
        self, root: Path, prompt: dict | None = None, extra_data: dict | None = None, interrupt_after: int | None = None
    ):
        self.prompt_id, self.node_id = "prompt-1", "0"
        self.prompt = prompt or {}
        self.extra_data = extra_data or {}
        self.input_dir, self.output_dir, self.temp_dir = root / "input", root / "output", root / "temp"
        for d in (self.input_dir, self.output_dir, self.temp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.events: list[tuple] = []
        self.interrupt_after = interrupt_after

    async def work(self, seconds=None):
        self.events.append(("work", self.node_id))

    async def progress(self, value, max, preview=None):
        if self.interrupt_after is not None and len(self.of("progress")) >= self.interrupt_after:
            raise Interrupted()
        self.events.append(("progress", self.node_id, value, max, preview))

    async def send_image(self, image, fmt="PNG"):
        self.events.append(("image", self.node_id, image, fmt))

    def save_image(self, image, filename_prefix, type="output", text=None):
        base = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}[type]
        subfolder, _, prefix = filename_prefix.rpartition("/")
        folder = base / subfolder
        folder.mkdir(parents=True, exist_ok=True)
        taken = [
            int(m.group(1))
            for f in folder.iterdir()
            if (m := re.fullmatch(re.escape(prefix) + r"_(\d{5})_\.png", f.name))
        ]
        name = f"{prefix}_{max(taken, default=0) + 1:05}_.png"
        (folder / name).write_bytes(encode_png(image, text))
        return {"filename": name, "subfolder": subfolder, "type": type}

    def resolve_input(self, name):
        path = self.input_dir / name
        if not path.is_file():
            raise FileNotFoundError(name)
        return path

    def of(self, kind):
        return [e for e in self.events if e[0] == kind]


async def execute(prompt: dict, ctx: Ctx, nodes=None) -> dict[str, NodeResult]:
    """Run a validated prompt in dependency order (a stand-in for the engine)."""
    nodes = nodes or default_nodes(input_dir=ctx.input_dir)
    ok, error, outputs, _ = validate_prompt(prompt, nodes)
    assert ok, error
    ctx.prompt = prompt
    results: dict[str, NodeResult] = {}

    async def run(node_id: str) -> NodeResult:
        if node_id not in results:
            node = prompt[node_id]
            inputs = {}
            for name, value in node["inputs"].items():
                inputs[name] = (await run(value[0])).outputs[value[1]] if isinstance(value, list) else value
            ctx.node_id = node_id
            results[node_id] = await nodes[node["class_type"]].run(ctx, inputs)
        return results[node_id]

    for output in outputs:
        await run(output)
    return results


# ---------------------------------------------------------------------------------------------
# object_info

INFO_KEYS = [
    "input",
    "input_order",
    "output",
    "output_is_list",
    "output_name",
    "name",
    "display_name",
    "description",
    "python_module",
    "category",
    "output_node",
]
WORKFLOW_CLASSES = {
    "EmptyImage",
    "ImageBlur",
    "ImageInvert",
    "ImageScale",
    "ImageBatch",
    "ImageToMask",
    "MaskToImage",
    "SaveImage",
    "PreviewImage",
    "LoadImage",
    "SaveImageWebsocket",
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "EmptyLatentImage",
    "KSampler",
    "VAEDecode",
    "SolidMask",
}


def test_object_info_entries_are_shaped_like_the_real_ones():
    nodes = default_nodes()
    assert set(nodes) >= WORKFLOW_CLASSES
    for name, node in nodes.items():
        info = node.info
        assert node.name == info["name"] == name
        assert all(key in info for key in INFO_KEYS), name
        json.dumps(info)
        assert info["input_order"] == {k: list(v) for k, v in info["input"].items()}
        assert len(info["output"]) == len(info["output_is_list"]) == len(info["output_name"])
        for category in ("required", "optional"):
            for spec in info["input"].get(category, {}).values():
                assert isinstance(spec, list) and 1 <= len(spec) <= 2
                assert isinstance(spec[0], (str, list))
        assert node.output_node is info["output_node"]
    outputs = {n for n, c in nodes.items() if c.output_node}
    assert outputs == {"SaveImage", "PreviewImage", "SaveImageWebsocket"}


def test_object_info_values_from_comfyui():
    nodes = default_nodes()
    ks = nodes["KSampler"].info["input"]["required"]
    assert ks["sampler_name"][0] == SAMPLERS and "euler" in SAMPLERS and "dpmpp_2m" in SAMPLERS
    assert ks["scheduler"][0] == SCHEDULERS and "normal" in SCHEDULERS and "karras" in SCHEDULERS
    assert ks["seed"][1]["max"] == 0xFFFFFFFFFFFFFFFF
    assert ks["cfg"][1] == {**ks["cfg"][1], "default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1}
    assert nodes["KSampler"].info["input_order"]["required"] == [
        "model",
        "seed",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "positive",
        "negative",
        "latent_image",
        "denoise",
    ]
    # the input_config values recorded in trace d
    assert nodes["ImageBlur"].info["input"]["required"]["blur_radius"] == [
        "INT",
        {"default": 1, "min": 1, "max": 31, "step": 1},
    ]
    assert nodes["EmptyImage"].info["input"]["required"]["width"] == [
        "INT",
        {"default": 512, "min": 1, "max": 16384, "step": 1},
    ]
    assert nodes["SaveImage"].info["input"]["required"]["images"] == ["IMAGE", {"tooltip": "The images to save."}]
    assert nodes["SaveImage"].info["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert nodes["ImageToMask"].info["input"]["required"]["channel"] == [
        "COMBO",
        {"options": ["red", "green", "blue", "alpha"]},
    ]
    assert nodes["SaveImageWebsocket"].info["python_module"] == "custom_nodes.websocket_image_save"


def test_checkpoint_list():
    default = default_nodes()["CheckpointLoaderSimple"].info["input"]["required"]["ckpt_name"][0]
    assert {"random_sd15_tiny.safetensors", "v1-5-pruned-emaonly-fp16.safetensors"} <= set(default)
    assert load_workflow("default_txt2img")["4"]["inputs"]["ckpt_name"] in default
    custom = default_nodes(["zeta.safetensors", "alpha.ckpt"])
    assert custom["CheckpointLoaderSimple"].info["input"]["required"]["ckpt_name"][0] == [
        "alpha.ckpt",
        "zeta.safetensors",
    ]


def test_load_image_lists_the_input_directory_at_every_read(tmp_path):
    node = default_nodes(input_dir=tmp_path)["LoadImage"]
    assert node.info["input"]["required"]["image"] == [[], {"image_upload": True}]
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("x")
    assert node.info["input"]["required"]["image"][0] == ["a.jpg", "b.png"]
    assert node.is_changed({"image": "b.png"}) != node.is_changed({"image": "a.jpg"})


def test_shipped_workflows_are_the_shared_ones():
    names = set(workflow_names())
    assert {
        "tiny",
        "tiny_chain",
        "slow",
        "batch",
        "multi_output",
        "preview",
        "ws_image",
        "runtime_error",
        "ksampler_random",
        "default_txt2img",
        "bad_validation",
        "bad_node_type",
        "no_outputs",
    } <= names
    if SHARED_WORKFLOWS.is_dir():
        for path in SHARED_WORKFLOWS.glob("*.json"):
            assert load_workflow(path.stem) == json.loads(path.read_text()), path.name
    first = load_workflow("tiny")
    first["1"]["inputs"]["color"] = 1
    assert load_workflow("tiny")["1"]["inputs"]["color"] != 1


# ---------------------------------------------------------------------------------------------
# workflows through the nodes


async def test_tiny_saves_a_png_with_the_prompt(tmp_path):
    prompt = load_workflow("tiny")
    ctx = Ctx(tmp_path, extra_data={"extra_pnginfo": {"workflow": {"id": "wf-1"}}})
    results = await execute(prompt, ctx)
    assert results["2"].ui == {"images": [{"filename": "tiny_00001_.png", "subfolder": "", "type": "output"}]}
    assert results["2"].outputs == ()
    path = tmp_path / "output" / "tiny_00001_.png"
    with Image.open(path) as im:
        assert im.size == (64, 64) and im.convert("RGB").getpixel((5, 5)) == (255, 0, 0)
    text = png_text(path)
    assert json.loads(text["prompt"]) == prompt
    assert json.loads(text["workflow"]) == {"id": "wf-1"}
    assert read_params(path) == {}
    assert [e[0] for e in ctx.events] == ["work", "work"]


async def test_tiny_chain(tmp_path):
    ctx = Ctx(tmp_path)
    results = await execute(load_workflow("tiny_chain"), ctx)
    scaled: ImageBatch = results["4"].outputs[0]
    assert scaled.size == (96, 96)
    # blue, inverted -> yellow
    assert scaled.frames[0].getpixel((48, 48)) == (255, 255, 0)
    assert (tmp_path / "output" / "tiny_chain_00001_.png").is_file()


async def test_batch_saves_four_images_from_one_node(tmp_path):
    results = await execute(load_workflow("batch"), Ctx(tmp_path))
    images = results["4"].ui["images"]
    assert [i["filename"] for i in images] == [f"batch_0000{n}_.png" for n in range(1, 5)]
    with Image.open(tmp_path / "output" / "batch_00004_.png") as im:
        assert im.size == (64, 64) and im.convert("RGB").getpixel((0, 0)) == (0, 0, 255)


async def test_multi_output_and_preview(tmp_path):
    results = await execute(load_workflow("multi_output"), Ctx(tmp_path))
    assert results["3"].ui["images"][0]["type"] == "output"
    assert results["4"].ui["images"][0]["filename"] == "multi_b_00001_.png"
    temp = results["5"].ui["images"][0]
    assert temp["type"] == "temp" and re.fullmatch(r"ComfyUI_temp_[a-z]{5}_00001_\.png", temp["filename"])
    assert (tmp_path / "temp" / temp["filename"]).is_file()


async def test_ws_image_sends_each_image_with_progress_i_of_n(tmp_path):
    ctx = Ctx(tmp_path)
    results = await execute(load_workflow("ws_image"), ctx)
    assert results["2"].ui is None and results["2"].outputs == ()
    sent = [(e[0], e[2] if e[0] == "progress" else e[3]) for e in ctx.events if e[0] in ("image", "progress")]
    assert sent == [("image", "PNG"), ("progress", 0), ("image", "PNG"), ("progress", 1)]
    assert {e[3] for e in ctx.of("progress")} == {2}
    assert ctx.of("image")[0][2].size == (64, 64)
    assert not any((tmp_path / "output").iterdir())
    assert default_nodes()["SaveImageWebsocket"].is_changed({}) is not None  # never cached


async def test_runtime_error_is_the_real_index_error(tmp_path):
    prompt = load_workflow("runtime_error")
    nodes = default_nodes()
    image = (await nodes["EmptyImage"].run(Ctx(tmp_path), prompt["1"]["inputs"])).outputs[0]
    with pytest.raises(IndexError) as err:
        await nodes["ImageToMask"].run(Ctx(tmp_path), {"image": image, "channel": "alpha"})
    assert str(err.value) == "index 3 is out of bounds for dimension 3 with size 3"
    mask = (await nodes["ImageToMask"].run(Ctx(tmp_path), {"image": image, "channel": "red"})).outputs[0]
    back = (await nodes["MaskToImage"].run(Ctx(tmp_path), {"mask": mask})).outputs[0]
    assert isinstance(mask, MaskBatch) and back.frames[0].getpixel((0, 0)) == (0, 0, 0)


def test_image_prints_like_a_torch_tensor():
    """execution_error.current_inputs of trace e: str() of EmptyImage(color=6303385), copied verbatim."""
    expected = (Path(__file__).parent / "fixtures" / "trace_e_current_inputs_image.txt").read_text()
    image = ImageBatch([Image.new("RGB", (64, 64), (0x60, 0x2E, 0x99))])
    assert str(image) == expected
    assert str(MaskBatch([Image.new("L", (2, 2), 255)])) == "tensor([[[1., 1.],\n         [1., 1.]]])"


@pytest.mark.parametrize("name", ["ksampler_random", "default_txt2img"])
async def test_sd_graph_draws_from_its_parameters(tmp_path, name):
    prompt = load_workflow(name)
    ctx = Ctx(tmp_path)
    results = await execute(prompt, ctx)
    ks = prompt["3"]["inputs"]
    progress = ctx.of("progress")
    assert [(e[2], e[3]) for e in progress] == [(s, ks["steps"]) for s in range(1, ks["steps"] + 1)]
    assert all(isinstance(e[4], Image.Image) and max(e[4].size) <= 512 for e in progress)
    saved = results["9"].ui["images"][0]
    path = tmp_path / "output" / saved["filename"]
    latent = prompt["5"]["inputs"]
    params = read_params(path)
    assert params == {
        "seed": ks["seed"],
        "steps": ks["steps"],
        "cfg": ks["cfg"],
        "sampler_name": ks["sampler_name"],
        "scheduler": ks["scheduler"],
        "denoise": ks["denoise"],
        "positive": prompt["6"]["inputs"]["text"],
        "negative": prompt["7"]["inputs"]["text"],
        "width": latent["width"],
        "height": latent["height"],
        "batch_index": 0,
        "ckpt_name": prompt["4"]["inputs"]["ckpt_name"],
    }
    assert json.loads(png_text(path)["prompt"]) == prompt
    with Image.open(path) as im:
        assert im.size == (latent["width"], latent["height"])
        assert digest(im.convert("RGB")) == digest(render(params))


async def test_pictures_differ_by_parameter_and_repeat_exactly(tmp_path):
    base = load_workflow("ksampler_random")
    variants = {
        "base": {},
        "seed": {"seed": 43},
        "cfg": {"cfg": 2.0},
        "steps": {"steps": 8},
        "sampler": {"sampler_name": "dpmpp_2m"},
        "scheduler": {"scheduler": "karras"},
        "denoise": {"denoise": 0.5},
    }
    digests = {}
    for label, change in variants.items():
        prompt = load_workflow("ksampler_random")
        prompt["3"]["inputs"].update(change)
        results = await execute(prompt, Ctx(tmp_path / label))
        digests[label] = digest(results["8"].outputs[0].frames[0])
    for label, text in {"positive": ("6", "a red house"), "negative": ("7", "")}.items():
        prompt = load_workflow("ksampler_random")
        prompt[text[0]]["inputs"]["text"] = text[1]
        results = await execute(prompt, Ctx(tmp_path / label))
        digests[label] = digest(results["8"].outputs[0].frames[0])
    assert len(set(digests.values())) == len(digests), digests
    again = await execute(base, Ctx(tmp_path / "again"))
    assert digest(again["8"].outputs[0].frames[0]) == digests["base"]
    a = (tmp_path / "base" / "output" / "ksampler_random_00001_.png").read_bytes()
    b = (tmp_path / "again" / "output" / "ksampler_random_00001_.png").read_bytes()
    assert a == b


async def test_latent_batch_gives_distinct_pictures(tmp_path):
    prompt = load_workflow("ksampler_random")
    prompt["5"]["inputs"]["batch_size"] = 3
    results = await execute(prompt, Ctx(tmp_path))
    images = results["9"].ui["images"]
    assert len(images) == 3
    params = [read_params(tmp_path / "output" / i["filename"]) for i in images]
    assert [p["batch_index"] for p in params] == [0, 1, 2]
    assert len({digest(f) for f in results["8"].outputs[0].frames}) == 3


async def test_ksampler_stops_between_steps_when_interrupted(tmp_path):
    ctx = Ctx(tmp_path, interrupt_after=2)
    with pytest.raises(Interrupted):
        await execute(load_workflow("default_txt2img"), ctx)
    assert len(ctx.of("progress")) == 2
    assert not any((tmp_path / "output").iterdir())


async def test_unsampled_latent_decodes_to_grey(tmp_path):
    nodes = default_nodes()
    size = {"width": 100, "height": 64, "batch_size": 2}
    latent = (await nodes["EmptyLatentImage"].run(Ctx(tmp_path), size)).outputs[0]
    images = (await nodes["VAEDecode"].run(Ctx(tmp_path), {"samples": latent, "vae": None})).outputs[0]
    assert len(images) == 2 and images.size == (96, 64) and images.params == [None, None]


async def test_load_image_gives_rgb_and_inverted_alpha_mask(tmp_path):
    ctx = Ctx(tmp_path)
    rgba = Image.new("RGBA", (10, 6), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (10, 20, 30, 0))
    rgba.save(ctx.input_dir / "in.png")
    Image.new("RGB", (5, 5), (1, 2, 3)).save(ctx.input_dir / "plain.png")
    node = default_nodes(input_dir=ctx.input_dir)["LoadImage"]
    image, mask = (await node.run(ctx, {"image": "in.png"})).outputs
    assert image.size == (10, 6) and image.frames[0].mode == "RGB"
    assert mask.frames[0].getpixel((0, 0)) == 255 and mask.frames[0].getpixel((1, 1)) == 0
    _, mask = (await node.run(ctx, {"image": "plain.png"})).outputs
    assert mask.size == (64, 64)
    with pytest.raises(FileNotFoundError):
        await node.run(ctx, {"image": "missing.png"})
    # LoadImage -> SaveImage round trip keeps the pixels
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "sub/copy"}},
    }
    results = await execute(prompt, ctx)
    assert results["2"].ui == {"images": [{"filename": "copy_00001_.png", "subfolder": "sub", "type": "output"}]}
    with Image.open(ctx.output_dir / "sub" / "copy_00001_.png") as im:
        assert im.convert("RGB").getpixel((3, 3)) == (10, 20, 30)


async def test_image_scale_keeps_aspect_and_crops(tmp_path):
    nodes = default_nodes()
    images = ImageBatch([Image.new("RGB", (200, 100), (9, 9, 9))])
    run = nodes["ImageScale"].run
    out = (
        await run(
            Ctx(tmp_path), {"image": images, "upscale_method": "area", "width": 50, "height": 0, "crop": "disabled"}
        )
    ).outputs[0]
    assert out.size == (50, 25)
    out = (
        await run(
            Ctx(tmp_path), {"image": images, "upscale_method": "lanczos", "width": 30, "height": 30, "crop": "center"}
        )
    ).outputs[0]
    assert out.size == (30, 30)
    same = (
        await run(
            Ctx(tmp_path), {"image": images, "upscale_method": "bilinear", "width": 0, "height": 0, "crop": "disabled"}
        )
    ).outputs[0]
    assert same is images


async def test_solid_mask(tmp_path):
    mask = (await default_nodes()["SolidMask"].run(Ctx(tmp_path), {"value": 0.5, "width": 8, "height": 4})).outputs[0]
    assert mask.size == (8, 4) and mask.frames[0].getpixel((0, 0)) == 128


def test_read_params_accepts_bytes_paths_and_images(tmp_path):
    params = {"seed": 1, "positive": "ünïcode ✓"}
    data = encode_png(Image.new("RGB", (4, 4)), {"comfynb_sim": json.dumps(params), "prompt": "{}"})
    (tmp_path / "x.png").write_bytes(data)
    assert read_params(data) == read_params(tmp_path / "x.png") == read_params(str(tmp_path / "x.png")) == params
    with Image.open(tmp_path / "x.png") as im:
        assert read_params(im) == params
    assert read_params(encode_png(Image.new("RGB", (4, 4)))) == {}
