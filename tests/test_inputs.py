"""Inputs of every kind over the simulator: video and audio uploads (extension kept), masks through
``/upload/mask``, and outputs of one job chained into the next, on one server and across several."""

from __future__ import annotations

import contextlib
import io

import av
import numpy as np
import pytest
from core.conftest import FAST, WAIT
from PIL import Image

from comfynb import ComfyError, Session, Workflow
from comfynb.results import InputName
from comfynb.sim import Simulator
from comfynb.sim.media import tone_bytes, video_bytes


@pytest.fixture
def session():
    with Session.simulated(**FAST) as s:
        yield s


def frames(n: int = 5, size: tuple[int, int] = (48, 32)) -> list[Image.Image]:
    return [Image.new("RGB", size, (40 * k, 255 - 40 * k, 90)) for k in range(n)]


def run(session: Session, prompt: dict):
    return session.submit(Workflow.load(prompt)).result(WAIT)


def count_frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as c:
        return sum(1 for _ in c.decode(video=0))


def count_samples(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as c:
        return sum(f.samples for f in c.decode(audio=0))


def test_a_video_upload_keeps_its_extension_and_loads(session, tmp_path):
    path = tmp_path / "my clip.webm"
    path.write_bytes(video_bytes(frames(5), ext="webm"))
    name = session.upload(path)
    assert name.startswith("my_clip-") and name.endswith(".webm")
    assert session.upload(path) == name  # content-addressed: sent once
    info = session.simulator.nodes["LoadVideo"].info["input"]["required"]["file"][1]["options"]
    assert name in info  # the server lists it as a video
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": name}},
        "2": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["1", 0], "filename_prefix": "copy", "format": "auto", "codec": "auto"},
        },
        "3": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}},
    }
    r = run(session, prompt)
    assert count_frames(r.videos[0].data) == 5 and r.texts["4"] == ["8.0"]
    mp4 = video_bytes(frames(3), ext="mp4")
    assert session.upload(mp4).endswith(".mp4")  # bytes: recognised by their first bytes


def test_an_audio_upload_loads_with_its_samples(session):
    flac = tone_bytes(330.0, seconds=0.5, rate=22050)
    name = session.upload(flac)
    assert name.endswith(".flac")
    prompt = {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": name}},
        "2": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": "audio/echo"}},
    }
    r = run(session, prompt)
    assert count_samples(r.audio[0].data) == 11025
    assert session.upload(tone_bytes(fmt="wav")).endswith(".wav")
    with pytest.raises(ValueError, match="pass a path instead"):
        session.upload(b"certainly not a media file")


def test_a_mask_is_painted_onto_its_image_and_loaded_as_one_minus_alpha(session):
    picture = Image.new("RGB", (32, 16), (200, 30, 60))
    name = session.upload(picture)
    mask = np.zeros((16, 32))
    mask[:, :8] = 1.0  # the left quarter is masked
    masked = session.upload_mask(mask, name)
    assert masked != name and masked.endswith(".png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": masked}},
        "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "mask"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "rgb"}},
    }
    r = run(session, prompt)
    mask_out, rgb_out = (ref.image.convert("RGB") for ref in r.images)
    assert mask_out.getpixel((2, 5)) == (255, 255, 255) and mask_out.getpixel((20, 5)) == (0, 0, 0)
    assert rgb_out.getpixel((20, 5)) == (200, 30, 60)  # the image itself is kept
    assert session.upload_mask(mask, name) == masked  # the same mask again: the same file

    # an output as the original: ComfyUI's mask editor convention, an RGBA image whose alpha is kept
    first = run(
        session,
        {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "base"}},
        },
    )
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # transparent = masked
    painted = session.upload_mask(rgba, first.images[0])
    assert isinstance(painted, InputName) and painted.server == first.server
    r = run(session, {**prompt, "1": {"class_type": "LoadImage", "inputs": {"image": painted}}})
    out = r.images[0].image.convert("L")
    assert out.getpixel((0, 0)) == 255 and out.getpixel((5, 5)) == 0


def test_an_output_ref_is_an_input_of_the_next_job(session):
    first = run(
        session,
        {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0x102030}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "chain/step"}},
        },
    )
    wf = Workflow.load(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "chain/next"}},
        }
    )
    wf["LoadImage.image"] = first.images[0]
    assert wf["LoadImage.image"] == "chain/step_00001_.png [output]"
    r = session.submit(wf).result(WAIT)
    assert r.images[0].image.convert("RGB").getpixel((3, 3)) == (255 - 0x10, 255 - 0x20, 255 - 0x30)
    assert Workflow.load(wf.to_api()).to_api() == wf.to_api()  # still plain JSON
    with pytest.raises(ComfyError, match="not JSON-serialisable"):
        wf["LoadImage.image"] = Workflow  # not a ref: the usual error
    # a video output chained into LoadVideo
    video = run(
        session,
        {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 3, "color": 0}},
            "2": {
                "class_type": "SaveWEBM",
                "inputs": {"images": ["1", 0], "filename_prefix": "v", "codec": "vp9", "fps": 4.0, "crf": 32.0},
            },
        },
    ).videos[0]
    again = Workflow.load(
        {
            "1": {"class_type": "LoadVideo", "inputs": {"file": "x"}},
            "2": {
                "class_type": "SaveVideo",
                "inputs": {"video": ["1", 0], "filename_prefix": "v2", "format": "auto", "codec": "auto"},
            },
        }
    )
    again["LoadVideo.file"] = video
    assert count_frames(session.submit(again).result(WAIT).videos[0].data) == 3


def test_a_sweep_over_earlier_outputs(session):
    colours = run(
        session,
        {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0x0000FF}},
            "2": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["3", 0]}},
            "3": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0x00FF00}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "palette"}},
        },
    ).images
    wf = Workflow.load(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}},
        }
    )
    sweep = session.sweep(wf, grid={"LoadImage.image": colours})
    frame = sweep.result(WAIT)
    assert list(frame["LoadImage.image"]) == ["palette_00001_.png [output]", "palette_00002_.png [output]"]
    pixels = [job.result().images[0].image.convert("RGB").getpixel((0, 0)) for job in sweep.jobs]
    assert pixels == [(255, 255, 0), (255, 0, 255)]


@pytest.fixture
def two_servers():
    """Two simulators with different checkpoints, so a workflow can be pinned to either."""
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(Simulator(checkpoints=["only_a.safetensors"]).running())
        b = stack.enter_context(Simulator(checkpoints=["only_b.safetensors"]).running())
        session = stack.enter_context(Session([a.url, b.url], **FAST))
        yield session, a, b


def pinned(ckpt: str) -> dict:
    """A node that only one server can load: capability routing sends the prompt there."""
    return {"90": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}


def test_a_chained_job_goes_to_the_server_holding_the_file_or_the_file_is_copied(two_servers):
    session, a, b = two_servers
    first = run(
        session,
        {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0xFF0000}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "src"}},
            **pinned("only_a.safetensors"),
        },
    )
    assert first.server == a.url
    wf = Workflow.load(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "out"}},
        }
    )
    wf["LoadImage.image"] = first.images[0]
    jobs = [session.submit(wf) for _ in range(6)]
    assert [job.result(WAIT).images[0].image.getpixel((1, 1))[:3] for job in jobs] == [(0, 255, 255)] * 6
    assert {job.server for job in jobs} == {a.url}  # all where the file is, though b was idle
    assert not any((b.root / "input").iterdir())

    # a job the holder cannot run: the file is copied to the server that can
    elsewhere = Workflow.load({**wf.to_api(), **pinned("only_b.safetensors")})
    job = session.submit(elsewhere)
    assert job.result(WAIT).images[0].image.getpixel((1, 1))[:3] == (0, 255, 255)
    assert job.server == b.url
    copies = [p.name for p in (b.root / "input").iterdir()]
    assert len(copies) == 1 and copies[0].startswith("src_00001_-") and copies[0].endswith(".png")
