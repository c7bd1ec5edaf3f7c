"""Workflows inside files ComfyUI makes: simulated outputs load back into the identical prompt;
UI-format files convert against the server's /object_info; every refusal is clear."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from ui_helpers import with_models

import comfynb as cn
from comfynb.embedded import read_embedded
from comfynb.errors import WorkflowError
from comfynb.sim.library import load_workflow
from comfynb.sim.metadata import save_video, save_with_metadata

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OBJECT_INFO = json.loads((FIXTURES / "object_info_0.8.0.json").read_text())
_SHARED = [Path(__file__).resolve().parents[2] / "shared" / "ui-workflows", Path("/work/shared/ui-workflows")]
SHARED = next((p for p in _SHARED if (p / "ui").is_dir()), None)


@pytest.fixture(scope="module")
def session():
    with cn.Session.simulated(progress=False) as s:
        yield s


def first_output(session, job) -> bytes:
    result = job.result(timeout=60)
    return result.images[0].data


def test_png_output_loads_back_into_the_identical_prompt_with_tags(session):
    wf = cn.Workflow.load(load_workflow("tiny_chain"))
    sweep = session.sweep(wf, grid={"ImageBlur.sigma": [1.0, 2.5]}, tag="roundtrip", concurrency=2)
    sweep.result(timeout=60)
    for i, job in enumerate(sweep.jobs):
        data = first_output(session, job)
        again = cn.Workflow.load(data)
        assert again == wf.with_values(sweep.plan.row(i))
        found = read_embedded(data)
        assert found.extra["comfynb"]["index"] == i and found.extra["comfynb"]["params"] == sweep.plan.row(i)
        assert found.workflow is None  # no UI workflow was known, none was invented


@pytest.mark.parametrize("suffix", [".webp", ".mp4", ".webm"])
def test_webp_and_video_written_like_comfyui_load_back(tmp_path, session, suffix):
    wf = cn.Workflow.load(load_workflow("tiny_chain"))
    data = first_output(session, session.submit(wf))
    prompt = read_embedded(data).prompt
    ui = {"nodes": [], "links": [], "version": 0.4}
    frames = [Image.open(io.BytesIO(data)).convert("RGB")] * 3
    path = save_with_metadata(tmp_path / f"out{suffix}", frames, prompt, {"workflow": ui, "comfynb": {"index": 3}})
    again = cn.Workflow.load(path)
    assert again == wf and again.ui == ui
    assert read_embedded(path.read_bytes()).extra == {"comfynb": {"index": 3}}


def test_webp_exif_tags_are_comfyuis(tmp_path):
    prompt = load_workflow("tiny")
    path = save_with_metadata(tmp_path / "a.webp", [Image.new("RGB", (8, 8))] * 2, prompt, {"workflow": {"nodes": []}})
    exif = Image.open(path).getexif()
    assert exif[0x0110] == "prompt:" + json.dumps(prompt)
    assert exif[0x010F] == 'workflow:{"nodes": []}'


def test_files_without_a_workflow_are_refused_clearly(tmp_path):
    plain = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(plain)
    with pytest.raises(WorkflowError, match="carries no workflow.*stripped"):
        cn.Workflow.load(plain)
    (tmp_path / "x.bin").write_bytes(b"\x00\x01\xff\xfe")
    with pytest.raises(WorkflowError, match="neither UTF-8 JSON text nor a PNG"):
        cn.Workflow.load(tmp_path / "x.bin")


def test_ui_only_png_converts_against_the_session(session, tmp_path):
    ui = {
        "nodes": [
            {
                "id": 1,
                "type": "EmptyImage",
                "mode": 0,
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
                "widgets_values": [64, 32, 1, 255],
            },
            {
                "id": 2,
                "type": "SaveImage",
                "mode": 0,
                "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
                "widgets_values": ["from_ui"],
            },
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    }
    path = tmp_path / "ui_only.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=_png({"workflow": json.dumps(ui)}))
    with pytest.raises(WorkflowError, match="session="):
        cn.Workflow.load(path)
    wf = cn.Workflow.load(path, session=session)
    assert wf.to_api() == {
        "1": {
            "inputs": {"width": 64, "height": 32, "batch_size": 1, "color": 255},
            "class_type": "EmptyImage",
            "_meta": {"title": "EmptyImage"},
        },
        "2": {
            "inputs": {"filename_prefix": "from_ui", "images": ["1", 0]},
            "class_type": "SaveImage",
            "_meta": {"title": "Save Image"},
        },
    }
    data = first_output(session, session.submit(wf))
    found = read_embedded(data)
    assert found.workflow == ui  # the UI workflow went along in extra_pnginfo and into the file
    assert cn.Workflow.load(data) == wf and cn.Workflow.load(data).ui == ui


def test_unknown_node_types_in_a_ui_file_are_listed(session):
    ui = {
        "nodes": [{"id": 1, "type": "KSamplerr", "mode": 0}, {"id": 2, "type": "FancyCustomNode", "mode": 0}],
        "links": [],
    }
    with pytest.raises(WorkflowError) as err:
        cn.Workflow.load(ui, session=session)
    assert "KSamplerr (node 1); did you mean KSampler?" in str(err.value)
    assert "FancyCustomNode (node 2)" in str(err.value) and "custom nodes" in str(err.value)


def test_bypass_and_mute_axes_change_the_graph_per_row(session):
    wf = cn.Workflow.load(load_workflow("tiny_chain"), session=session)
    sweep = session.sweep(wf, grid={"ImageInvert@bypass": [False, True], "ImageBlur@mute": [False]}, concurrency=2)
    df = sweep.result(timeout=60)
    assert list(df.status) == ["success", "success"]
    with_invert, without = (read_embedded(first_output(session, job)).prompt for job in sweep.jobs)
    assert "3" in with_invert and with_invert["4"]["inputs"]["image"] == ["3", 0]
    assert "3" not in without and without["4"]["inputs"]["image"] == ["2", 0]  # rewired to the IMAGE input
    muted = wf.with_values({"ImageBlur@mute": True}).to_api()
    assert "2" not in muted and "image" not in muted["3"]["inputs"]  # the input linked to a muted node goes


@pytest.mark.skipif(SHARED is None, reason="shared/ui-workflows not found beside the repository")
def test_converted_template_runs_on_a_simulator_serving_the_real_object_info():
    ui = json.loads((SHARED / "ui" / "flux1_krea_dev.json").read_text())
    ref = json.loads((SHARED / "ref" / "flux1_krea_dev.api.json").read_text())
    info = with_models(OBJECT_INFO, ref)
    with cn.Session.simulated(progress=False, object_info=info) as real:
        wf = cn.Workflow.load(ui, session=real)
        assert json.dumps(wf.to_api(), sort_keys=True) == json.dumps(ref, sort_keys=True)
        wf.check(real)
        data = first_output(real, real.submit(wf))
        again = cn.Workflow.load(data, session=real)
        assert again == wf and again.ui == ui
        bad = wf.with_values({"53:31.sampler_name": "eulerr"})
        with pytest.raises(WorkflowError, match="did you mean 'euler'"):
            bad.check(real)
    with cn.Session.simulated(progress=False, object_info=OBJECT_INFO) as bare:  # the models are missing
        with pytest.raises(WorkflowError, match="flux1-krea-dev_fp8_scaled.safetensors' is not offered"):
            cn.Workflow.load(ui, session=bare).check(bare)


def _png(text: dict):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    return info


@pytest.mark.parametrize("fmt, codec", [("flac", "flac"), ("mp3", "libmp3lame"), ("ogg", "libopus")])
def test_audio_container_tags_are_read(tmp_path, fmt, codec):
    """ComfyUI's SaveAudio writes prompt and workflow as container tags; read them back."""
    import av
    import numpy as np

    prompt = load_workflow("tiny")
    path = tmp_path / f"a.{fmt}"
    with av.open(str(path), "w", format=fmt) as out:
        out.metadata.update({"prompt": json.dumps(prompt), "workflow": json.dumps({"nodes": [], "links": []})})
        stream = out.add_stream(codec, rate=48000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 960), dtype=np.int16 if codec == "flac" else np.float32),
            format="s16" if codec == "flac" else "flt",
            layout="mono",
        )
        frame.sample_rate = 48000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    found = read_embedded(path)
    assert found.prompt == prompt and found.workflow == {"nodes": [], "links": []}
    assert cn.Workflow.load(path).to_api() == prompt


REFERENCES = sorted(p.name[: -len(".api.json")] for p in (SHARED / "ref").glob("*.api.json")) if SHARED else []


@pytest.fixture(scope="module")
def real_server():
    """A simulator serving ComfyUI 0.8.0's /object_info, with the models and input files the references use."""
    info = OBJECT_INFO
    refs = {name: json.loads((SHARED / "ref" / f"{name}.api.json").read_text()) for name in REFERENCES}
    for ref in refs.values():
        info = with_models(info, ref)
    with cn.Session.simulated(progress=False, object_info=info) as s:
        folder = s.simulator.files.dirs["input"]
        for ref in refs.values():
            for node in ref.values():
                if node["class_type"] == "LoadImage":
                    Image.new("RGB", (64, 64), "white").save(folder / node["inputs"]["image"])
                elif node["class_type"] == "LoadVideo":
                    save_video([Image.new("RGB", (64, 64), "white")] * 3, folder / node["inputs"]["file"], None, None)
        yield s


@pytest.mark.skipif(not REFERENCES, reason="shared/ui-workflows not found beside the repository")
@pytest.mark.parametrize("name", REFERENCES)
def test_every_reference_workflow_runs_on_the_simulator_serving_real_object_info(real_server, name):
    ui = json.loads((SHARED / "ui" / f"{name}.json").read_text())
    wf = cn.Workflow.load(ui, session=real_server).check(real_server)
    result = real_server.submit(wf).result(timeout=60)
    assert result.status == "success"
    for image in result.images[:1]:
        again = cn.Workflow.load(image.data, session=real_server)
        assert again == wf and again.ui == ui


def chain_ui() -> dict:
    """tiny_chain in UI format: EmptyImage -> ImageBlur -> ImageInvert -> ImageScale -> SaveImage."""

    def link(lid, a, b, kind="IMAGE"):
        return [lid, a, 0, b, 0, kind]

    def out(lid):
        return [{"name": "IMAGE", "type": "IMAGE", "links": [lid]}]

    def inp(name, lid):
        return [{"name": name, "type": "IMAGE", "link": lid}]

    return {
        "nodes": [
            {"id": 1, "type": "EmptyImage", "mode": 0, "outputs": out(1), "widgets_values": [128, 128, 1, 255]},
            {
                "id": 2,
                "type": "ImageBlur",
                "mode": 0,
                "inputs": inp("image", 1),
                "outputs": out(2),
                "widgets_values": [3, 1.0],
            },
            {
                "id": 3,
                "type": "ImageInvert",
                "mode": 0,
                "inputs": inp("image", 2),
                "outputs": out(3),
                "widgets_values": [],
            },
            {
                "id": 4,
                "type": "ImageScale",
                "mode": 0,
                "inputs": inp("image", 3),
                "outputs": out(4),
                "widgets_values": ["bilinear", 96, 96, "disabled"],
            },
            {"id": 5, "type": "SaveImage", "mode": 0, "inputs": inp("images", 4), "widgets_values": ["tiny_chain"]},
        ],
        "links": [link(1, 1, 2), link(2, 2, 3), link(3, 3, 4), link(4, 4, 5)],
    }


def test_each_sweep_row_file_carries_its_own_graph_and_row(session):
    wf = cn.Workflow.load(chain_ui(), session=session)
    assert set(wf) == {"1", "2", "3", "4", "5"} and wf["ImageScale.width"] == 96
    sweep = session.sweep(wf, grid={"Invert Image@bypass": [False, True]}, tag="modes", concurrency=2)
    sweep.result(timeout=60)
    for i, job in enumerate(sweep.jobs):
        found = read_embedded(first_output(session, job))
        modes = {node["id"]: node["mode"] for node in found.workflow["nodes"]}
        assert modes[3] == (4 if i else 0) and modes[2] == 0
        assert found.extra["comfynb"]["params"] == {"Invert Image@bypass": bool(i)}
        assert ("3" in found.prompt) is (not i)
        # the file converts back to the prompt that made it, bypass included
        assert cn.Workflow.load(found.workflow, session=session).to_api() == cn.Workflow.load(found.prompt).to_api()


def test_damaged_files_are_refused_clearly(session):
    data = first_output(session, session.submit(cn.Workflow.load(load_workflow("tiny"))))
    for cut in (20, 60, len(data) // 2):
        try:
            cn.Workflow.load(data[:cut])
        except WorkflowError as exc:
            assert "PNG" in str(exc) or "png" in str(exc) or "workflow" in str(exc)
    with pytest.raises(WorkflowError, match="looks like a png file but cannot be read"):
        cn.Workflow.load(data[:40])


@pytest.mark.parametrize(
    "saver, inputs",
    [
        ("SaveAnimatedWEBP", {"fps": 6.0, "lossless": False, "quality": 80, "method": "default"}),
        ("SaveWEBM", {"codec": "vp9", "fps": 8.0, "crf": 32.0}),
        ("SaveVideo", None),
    ],
)
def test_simulated_webp_and_video_outputs_load_back_into_the_identical_prompt(session, saver, inputs):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 3, "color": 255}},
    }
    if inputs is None:  # SaveVideo takes a VIDEO made by CreateVideo
        graph["2"] = {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}}
        graph["3"] = {
            "class_type": "SaveVideo",
            "inputs": {"video": ["2", 0], "filename_prefix": "rt", "format": "mp4", "codec": "h264"},
        }
    else:
        graph["3"] = {"class_type": saver, "inputs": {"images": ["1", 0], "filename_prefix": "rt", **inputs}}
    wf = cn.Workflow.load(chain_ui(), session=session)  # any UI workflow: it must come back from the file
    ui = wf.ui
    sent = cn.Workflow.load(graph)
    sent.ui = ui
    result = session.submit(sent).result(timeout=60)
    assert result.status == "success", result
    data = result.files[0].data
    again = cn.Workflow.load(data)
    assert again == sent and again.ui == ui
