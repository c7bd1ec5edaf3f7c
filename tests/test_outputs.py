"""Outputs of every kind, end to end over the simulator: videos, audio, animations, texts, latents,
VideoHelperSuite's ``gifs``, and SaveImageWebsocket images (including a socket that drops mid-node)."""

from __future__ import annotations

import io
import json
import struct
import time
from pathlib import Path

import av
import pandas as pd
import pytest
from core.conftest import FAST, WAIT
from PIL import Image, ImageStat

from comfynb import ComfyError, OutputsMissing, Session, Workflow
from comfynb.results import KINDS, FileRef, ImageRef, Result, kind_of
from comfynb.sim.library import load_workflow
from comfynb.sim.media import all_nodes

REAL_INFO = Path("/work/shared/ui-workflows/object_info_0.8.0.json")
SERVER = "http://127.0.0.1:8188"


@pytest.fixture
def session():
    with Session.simulated(**FAST) as s:
        yield s


def frames_graph(n: int = 4, size: int = 64) -> dict:
    """A deterministic batch of ``n`` distinct pictures (node "7"), ready to be fed to output nodes."""
    wf = load_workflow("video_audio")
    wf["5"]["inputs"].update(width=size, height=size, batch_size=n)
    keep = ("1", "2", "3", "4", "5", "6", "7", "8")
    return {k: v for k, v in wf.items() if k in keep}


def run(session: Session, prompt: dict) -> Result:
    return session.submit(Workflow.load(prompt)).result(WAIT)


def decoded(data: bytes) -> tuple[int, int, float]:
    """(video frames, audio samples, duration in s) of a media file, read back with PyAV."""
    with av.open(io.BytesIO(data)) as c:
        duration = (c.duration or 0) / 1_000_000
        frames = sum(1 for _ in c.decode(video=0)) if c.streams.video else 0
    with av.open(io.BytesIO(data)) as c:
        samples = sum(f.samples for f in c.decode(audio=0)) if c.streams.audio else 0
    return frames, samples, duration


# -- kinds from history items ----------------------------------------------------------------------


def test_kind_comes_from_format_then_animated_then_extension():
    assert kind_of({"filename": "a.png", "format": "video/h264-mp4"}) == "video"
    assert kind_of({"filename": "a.webp", "format": "image/webp"}) == "animated"
    assert kind_of({"filename": "a.png", "format": "image/png"}) == "image"
    assert kind_of({"filename": "a.mp4"}, animated=True) == "video"
    assert kind_of({"filename": "a.png"}, animated=True) == "animated"
    assert kind_of({"filename": "a.png"}) == "image"
    assert kind_of({"filename": "a.flac"}) == "audio"
    assert kind_of({"filename": "a.latent"}) == "latent"
    assert kind_of({"filename": "a.glb"}) == "mesh"
    assert kind_of({"filename": "weird.xyz"}, key="h3_video") == "other"
    assert kind_of({"filename": "noext"}, key="audio") == "audio"


def test_every_file_of_every_key_is_kept_with_its_kind():
    outputs = {
        "9": {"images": [{"filename": "v.mp4", "subfolder": "video", "type": "output"}], "animated": [True]},
        "10": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}], "animated": [False]},
        "11": {
            "gifs": [
                {"filename": "g.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4", "frame_rate": 8}
            ]
        },
        "12": {"text": ["hello", 3], "audio": [{"filename": "a.flac", "subfolder": "audio", "type": "output"}]},
        "13": {"latents": [{"filename": "l.latent", "subfolder": "latents", "type": "output"}]},
        "14": {"3d": [{"filename": "m.glb", "subfolder": "mesh", "type": "output"}]},
        "15": {"result": ["mesh/ComfyUI_00001_.glb", {"position": [1, 2, 3]}, None]},
        "16": {"h3_video": [{"filename": "x.bin", "subfolder": "", "type": "temp"}], "custom": ["just text"]},
        "17": {"result": ["preview.obj [temp]"]},
    }
    r = Result.from_history("p", {"outputs": outputs}, server=SERVER, fetcher=None)
    got = [(f.node_id, f.key, f.subfolder, f.filename, f.type, f.kind) for f in r.files]
    assert got == [
        ("9", "images", "video", "v.mp4", "output", "video"),
        ("10", "images", "", "p.png", "temp", "image"),
        ("11", "gifs", "", "g.mp4", "output", "video"),
        ("12", "audio", "audio", "a.flac", "output", "audio"),
        ("13", "latents", "latents", "l.latent", "output", "latent"),
        ("14", "3d", "mesh", "m.glb", "output", "mesh"),
        ("15", "result", "mesh", "ComfyUI_00001_.glb", "output", "mesh"),
        ("16", "h3_video", "", "x.bin", "temp", "other"),
        ("17", "result", "", "preview.obj", "temp", "mesh"),
    ]
    assert [f.filename for f in r.images] == ["p.png"]
    assert [f.filename for f in r.videos] == ["v.mp4", "g.mp4"]
    assert r.videos[1].format == "video/h264-mp4" and r.videos[1].frame_rate == 8.0
    assert [f.filename for f in r.audio] == ["a.flac"] and [f.filename for f in r.latents] == ["l.latent"]
    assert [f.filename for f in r.meshes] == ["m.glb", "ComfyUI_00001_.glb", "preview.obj"]
    assert r.texts == {"12": ["hello"]}
    assert {f.kind for f in r.files} <= set(KINDS) and ImageRef is FileRef
    with pytest.raises(TypeError, match="not an image"):
        r.videos[0].image  # noqa: B018
    with pytest.raises(ValueError, match="unknown kind"):
        r.of_kind("movie")


# -- the simulator's media nodes, through a session ------------------------------------------------


def test_simulated_media_nodes_match_the_real_object_info():
    real = json.loads(REAL_INFO.read_text())
    nodes = all_nodes()
    for name in (
        "CreateVideo",
        "SaveVideo",
        "SaveWEBM",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "PreviewAny",
        "PrimitiveString",
        "SaveLatent",
        "LoadVideo",
        "GetVideoComponents",
    ):
        assert json.loads(json.dumps(nodes[name].info)) == real[name], name
    for name in ("SaveAudio", "PreviewAudio", "EmptyAudio", "LoadAudio", "VHS_VideoCombine", "SimSineWave"):
        assert nodes[name].info["name"] == name
    assert nodes["VHS_VideoCombine"].info["output"] == ["VHS_FILENAMES"]


def test_video_audio_text_and_frames_from_one_prompt(session, tmp_path):
    r = run(session, load_workflow("video_audio"))
    assert r.status == "success" and not r.missing
    (video,) = r.videos
    (audio,) = r.audio
    assert (video.key, video.subfolder, video.filename, video.mime) == (
        "images",
        "video",
        "ComfyUI_00001_.mp4",
        "video/mp4",
    )
    assert (audio.subfolder, audio.filename, audio.mime) == ("audio", "ComfyUI_00001_.flac", "audio/flac")
    assert len(r.images) == 6 and all(f.subfolder == "frames" for f in r.images)
    assert r.texts == {"12": ["a lighthouse at dusk, waves"]}
    frames, samples, duration = decoded(video.data)
    assert frames == 6 and samples > 0 and duration == pytest.approx(1.0, abs=0.2)
    assert decoded(audio.data)[1] == 44100
    assert video.first_frame.size == (128, 128)
    still = ImageStat.Stat(r.images[0].image.convert("RGB")).mean
    assert max(abs(a - b) for a, b in zip(ImageStat.Stat(video.first_frame).mean, still)) < 12  # lossy, same picture
    saved = video.save(tmp_path)
    assert saved == tmp_path / "video" / "ComfyUI_00001_.mp4" and saved.read_bytes() == video.data
    fresh = Result.from_history(r.prompt_id, r.history, server=r.server, fetcher=video.fetcher).audio[0]
    assert fresh.save(tmp_path / "tone.flac").read_bytes() == audio.data  # streamed: nothing cached before
    assert "data" not in fresh._cache
    assert not list(tmp_path.rglob("*.part"))


def test_every_output_node_of_the_simulator(session, tmp_path):
    prompt = frames_graph(4)
    prompt.update(
        {
            "20": {
                "class_type": "SaveWEBM",
                "inputs": {"images": ["7", 0], "filename_prefix": "w", "codec": "vp9", "fps": 8.0, "crf": 32.0},
            },
            "21": {
                "class_type": "SaveAnimatedWEBP",
                "inputs": {
                    "images": ["7", 0],
                    "filename_prefix": "a",
                    "fps": 6.0,
                    "lossless": False,
                    "quality": 80,
                    "method": "default",
                },
            },
            "22": {
                "class_type": "SaveAnimatedPNG",
                "inputs": {"images": ["7", 0], "filename_prefix": "a", "fps": 6.0, "compress_level": 4},
            },
            "23": {"class_type": "PreviewAudio", "inputs": {"audio": ["8", 0]}},
            "24": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "latents/ComfyUI"}},
            "25": {
                "class_type": "VHS_VideoCombine",
                "inputs": {
                    "images": ["7", 0],
                    "frame_rate": 8,
                    "loop_count": 0,
                    "filename_prefix": "AnimateDiff",
                    "format": "video/h264-mp4",
                    "pingpong": False,
                    "save_output": True,
                    "audio": ["8", 0],
                },
            },
            "26": {
                "class_type": "VHS_VideoCombine",
                "inputs": {
                    "images": ["7", 0],
                    "frame_rate": 8,
                    "loop_count": 0,
                    "filename_prefix": "gif/x",
                    "format": "image/gif",
                    "pingpong": True,
                    "save_output": False,
                },
            },
            "27": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
            "28": {"class_type": "EmptyAudio", "inputs": {"duration": 0.25, "sample_rate": 8000, "channels": 2}},
            "29": {"class_type": "SaveAudio", "inputs": {"audio": ["28", 0], "filename_prefix": "audio/silence"}},
        }
    )
    r = run(session, prompt)
    by_node = {f.node_id: f for f in r.files}
    assert set(by_node) == {"20", "21", "22", "23", "24", "25", "26", "29"} and not r.images
    assert (by_node["20"].kind, by_node["20"].filename) == ("video", "w_00001_.webm")
    assert decoded(by_node["20"].data)[0] == 4
    for node, ext in (("21", "WEBP"), ("22", "PNG")):
        img = by_node[node].image
        assert by_node[node].kind == "animated" and img.format == ext and img.n_frames == 4
    assert (by_node["23"].kind, by_node["23"].type) == ("audio", "temp")
    assert by_node["23"].filename.startswith("ComfyUI_temp_") and decoded(by_node["23"].data)[1] == 44100
    latent = by_node["24"].data
    header = json.loads(latent[8 : 8 + struct.unpack("<Q", latent[:8])[0]])
    assert by_node["24"].kind == "latent" and header["latent_tensor"]["shape"] == [4, 4, 8, 8]
    vhs = by_node["25"]
    assert (vhs.kind, vhs.key, vhs.format, vhs.frame_rate, vhs.filename) == (
        "video",
        "gifs",
        "video/h264-mp4",
        8.0,
        "AnimateDiff_00001.mp4",
    )
    item = r.outputs["25"]["gifs"][0]
    assert item["workflow"] == "AnimateDiff_00001.png" and item["fullpath"].endswith("/output/AnimateDiff_00001.mp4")
    assert decoded(vhs.data)[:2] > (3, 0)  # 4 frames and a sound track
    gif = by_node["26"]
    assert (gif.kind, gif.type, gif.subfolder) == ("animated", "temp", "gif") and gif.image.n_frames == 6  # pingpong
    assert len(r.texts["27"]) == 1 and r.texts["27"][0].startswith("Latent(width=64, height=64, batch_size=4")
    assert decoded(by_node["29"].data)[1] == 2000
    for f in r.files:  # every kind saves, streamed, under the server's names
        assert f.save(tmp_path).read_bytes() == f.data
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        f"{f.subfolder}/{f.filename}" if f.subfolder else f.filename for f in r.files
    )


def test_preview_any_renders_strings_numbers_and_json(session):
    prompt = {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": "plain text"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }
    r = run(session, prompt)
    assert r.texts["2"] == ["plain text"] and list(r.texts) == ["2", "4"] and r.files == []


def test_media_nodes_say_what_to_install_without_pyav(session, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    prompt = frames_graph(2)
    prompt["9"] = {"class_type": "SaveAudio", "inputs": {"audio": ["8", 0], "filename_prefix": "audio/x"}}
    with pytest.raises(ComfyError, match=r"pip install 'comfynb\[media\]'"):
        run(session, prompt)


# -- SaveImageWebsocket ------------------------------------------------------------------------------


def ws_prompt(n: int = 3) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": n, "color": 0x00FF00}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }


def test_websocket_images_are_in_memory_refs_of_their_job_in_order(session, tmp_path):
    jobs = [session.submit(Workflow.load(ws_prompt(n))) for n in (2, 3)]
    for job, n in zip(jobs, (2, 3)):
        r = job.result(WAIT)
        assert not r.missing and job.attempts == 1
        nodes = [f.node_id for f in r.images]
        assert sorted(nodes) == ["3"] * n + ["4"] * n and nodes in (["3"] * n + ["4"] * n, ["4"] * n + ["3"] * n)
        assert {(f.type, f.kind) for f in r.images} == {("websocket", "image")}
        assert [f.filename.split("_")[-1] for f in r.images[:n]] == [f"{k:05}.png" for k in range(1, n + 1)]
        colours = {f.node_id: f.image.convert("RGB").getpixel((0, 0)) for f in r.images}
        assert colours == {"3": (255, 0, 255), "4": (0, 255, 0)}  # attributed to the right node
        assert all(f.image.size == (32, 16) and f.url is None for f in r.images)
        assert r.images[0].save(tmp_path / job.prompt_id).read_bytes() == r.images[0].data
        with pytest.raises(ComfyError, match="upload it first"):
            r.images[0].as_input()


def _drop_while_ws_node_runs(policy: str, **options):
    """A job whose SaveImageWebsocket node runs for 0.6 s, with every socket dropped meanwhile."""
    s = Session.simulated(node_times={"SaveImageWebsocket": 0.6}, on_missing_outputs=policy, **FAST, **options)
    job = s.submit(Workflow.load(load_workflow("ws_image")))
    deadline = time.monotonic() + WAIT
    while job.progress.node != "2" and time.monotonic() < deadline:
        time.sleep(0.005)
    assert job.progress.node == "2"
    s.simulator.drop_sockets()
    return s, job


def test_socket_dropped_during_websocket_node_reruns_the_prompt():
    s, job = _drop_while_ws_node_runs("rerun")
    with s:
        r = job.result(WAIT)
        assert job.attempts == 2 and not r.missing
        assert [f.node_id for f in r.images] == ["2", "2"] and all(f.image.size == (64, 64) for f in r.images)
        assert s.simulator.faults.counts["drop_sockets"] >= 1


def test_socket_dropped_during_websocket_node_raises_when_asked():
    s, job = _drop_while_ws_node_runs("raise")
    with s:
        with pytest.raises(OutputsMissing, match="SaveImageWebsocket node.s. 2 may be incomplete") as info:
            job.result(WAIT)
        assert job.attempts == 1 and job.status == "error"
        assert list(info.value.result.missing) == ["2"] and info.value.result.status == "success"


def test_a_rerun_needs_an_attempt_left():
    s, job = _drop_while_ws_node_runs("rerun", max_attempts=1)
    with s:
        with pytest.raises(OutputsMissing, match=r"1 submission\(s\); on_missing_outputs='rerun'"):
            job.result(WAIT)
        assert job.attempts == 1


def test_socket_dropped_during_websocket_node_kept_says_what_may_be_missing():
    s, job = _drop_while_ws_node_runs("keep")
    with s:
        r = job.result(WAIT)
        assert job.attempts == 1 and list(r.missing) == ["2"] and "MAY BE MISSING" in repr(r)


def test_missing_output_policy_is_checked():
    with pytest.raises(ValueError, match="on_missing_outputs"):
        Session("http://127.0.0.1:9", on_missing_outputs="retry")


def test_a_picture_of_a_video_result_is_its_first_frame(session):
    from comfynb.results import first_frame

    r = run(session, load_workflow("video_audio"))
    first = r.videos[0].first_frame
    assert isinstance(first, Image.Image) and first.mode == "RGB"
    with pytest.raises(ComfyError, match="not an image or video that can be decoded"):
        first_frame(b"neither a picture nor a video" * 10)


# -- frames, sweeps, contact sheets ---------------------------------------------------------------


def test_sweep_frame_has_a_column_per_kind_and_saves_every_kind(session, tmp_path):
    wf = Workflow.load(load_workflow("video_audio"))
    wf["Frames.batch_size"] = 3
    wf["Frames.width"] = wf["Frames.height"] = 64
    sweep = session.sweep(wf, grid={"Prompt.value": ["a red boat", "a green hill"], "KSampler.seed": [1, 2]})
    df = sweep.result(WAIT)
    assert list(df.columns[:2]) == ["Prompt.value", "KSampler.seed"] and (df.status == "success").all()
    for column in ("images", "videos", "audio", "texts"):
        assert column in df.columns
    assert "animations" not in df.columns and "latents" not in df.columns  # only kinds that occur
    assert [len(v) for v in df.videos] == [1] * 4 and [len(v) for v in df.images] == [3] * 4
    assert all(v[0].endswith(".mp4&subfolder=video&type=output") for v in df.videos)
    assert [list(t) for t in df.texts] == [["a red boat"], ["a red boat"], ["a green hill"], ["a green hill"]]
    df.to_parquet(tmp_path / "frame.parquet")
    back = pd.read_parquet(tmp_path / "frame.parquet")
    assert [list(v) for v in back.videos] == [list(v) for v in df.videos]

    out = sweep.save(tmp_path / "saved")
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "videos/00000.mp4" in names and "audio/00003.flac" in names and "texts/00001.txt" in names
    assert "images/00002-2.png" in names and not any(n.endswith(".part") for n in names)
    assert (out / "texts/00002.txt").read_text() == "a green hill"
    assert decoded((out / "videos/00001.mp4").read_bytes())[0] == 3
    saved = pd.read_parquet(out / "results.parquet")
    assert list(saved.files[0]) == [
        "images/00000.png",
        "images/00000-1.png",
        "images/00000-2.png",
        "videos/00000.mp4",
        "audio/00000.flac",
        "texts/00000.txt",
    ]
    csv = pd.read_csv(out / "results.csv")
    assert json.loads(csv.texts[3]) == ["a green hill"]

    videos_only = df.assign(images=[[] for _ in range(len(df))])  # a sheet from first frames of videos
    from comfynb.sweep import contact_sheet

    sheet = contact_sheet(session, videos_only, "Prompt.value", "KSampler.seed", size=96)
    grey = (221, 221, 221)  # the fill of a cell that could not show a picture
    cells = [sheet.getpixel((x, y)) for x in (sheet.width - 48, sheet.width - 144) for y in (sheet.height - 48,)]
    assert all(c != grey for c in cells)


def test_websocket_images_are_saved_by_sweeps(session, tmp_path):
    wf = Workflow.load(ws_prompt(2))
    sweep = session.sweep(wf, grid={"1.color": [0xFF0000, 0x0000FF]})
    out = sweep.save(tmp_path)
    names = sorted(p.relative_to(out).as_posix() for p in (out / "images").iterdir())
    assert names == [f"images/0000{i}-ws-{k}.png" for i in (0, 1) for k in (1, 2, 3, 4)]
    assert Image.open(out / "images/00001-ws-1.png").size == (32, 16)


# -- notebook display --------------------------------------------------------------------------------


@pytest.fixture
def formatter():
    from IPython.core.formatters import DisplayFormatter

    from comfynb.display import register

    fmt = DisplayFormatter()
    assert register(fmt)
    return fmt


def test_results_show_players_animations_and_text(session, formatter, monkeypatch):
    import base64
    import re

    from comfynb import display

    prompt = load_workflow("video_audio")
    prompt["20"] = {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {
            "images": ["7", 0],
            "filename_prefix": "a",
            "fps": 6.0,
            "lossless": True,
            "quality": 80,
            "method": "default",
        },
    }
    prompt["12"]["inputs"]["source"] = "<b>not bold</b>"
    r = run(session, prompt)
    html = formatter.format(r)[0]["text/html"]
    videos = re.findall(r'<video controls[^>]*><source src="data:video/mp4;base64,([^"]+)"', html)
    audios = re.findall(r'<audio controls[^>]*><source src="data:audio/flac;base64,([^"]+)"', html)
    assert [base64.b64decode(v) for v in videos] == [r.videos[0].data]
    assert [base64.b64decode(a) for a in audios] == [r.audio[0].data]
    animation = re.search(r'<figure class="comfynb-animated"[^>]*><img src="data:image/webp;base64,([^"]+)"', html)
    assert base64.b64decode(animation.group(1)) == r.animations[0].data  # the original file: it moves
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html and "<b>not bold</b>" not in html
    assert html.count('<img src="data:image/jpeg') == 6  # thumbnails of the still frames

    monkeypatch.setattr(display, "INLINE_LIMIT", 100)  # larger files stream from /view
    fresh = Result.from_history(r.prompt_id, r.history, server=r.server, fetcher=r.videos[0].fetcher)
    html = formatter.format(fresh)[0]["text/html"]
    src = re.search(r'<video controls[^>]*><source src="([^"]+)"', html).group(1)
    assert src.replace("&amp;", "&") == fresh.videos[0].url and "data" not in fresh.videos[0]._cache
    player = formatter.format(fresh.audio[0])[0]["text/html"]
    assert "<audio controls" in player and fresh.audio[0].url.replace("&", "&amp;") in player
    assert "text/html" not in formatter.format(fresh.images[0])[0]  # still images keep their PNG view


def test_a_video_only_result_gets_first_frame_thumbnails(session):
    from comfynb.display import thumbnail_refs, thumbnail_uri

    prompt = frames_graph(3)
    prompt["9"] = {"class_type": "CreateVideo", "inputs": {"images": ["7", 0], "fps": 6.0}}
    prompt["10"] = {
        "class_type": "SaveVideo",
        "inputs": {"video": ["9", 0], "filename_prefix": "v", "format": "auto", "codec": "auto"},
    }
    r = run(session, prompt)
    (ref,) = thumbnail_refs(r, 4)
    assert ref.kind == "video" and thumbnail_uri(ref.data).startswith("data:image/jpeg;base64,")


def test_websocket_outputs_of_a_job_followed_by_another_process_are_in_doubt():
    from comfynb import _loop

    with Session.simulated(**FAST) as first:
        done = first.submit(Workflow.load(load_workflow("ws_image"))).result(WAIT)
        assert len(done.images) == 2 and not done.missing
        for policy, prompt, attempts, images in (("rerun", None, 1, 0), ("rerun", load_workflow("ws_image"), 2, 2)):
            with Session(first.simulator.url, on_missing_outputs=policy, **FAST) as later:

                async def adopt(later=later, prompt=prompt):
                    return later._adopt(
                        done.prompt_id, server=later._servers[0].url, prompt=prompt, tags=None, attempts=1
                    )

                job = _loop.run_sync(adopt())
                r = job.result(WAIT)
                assert job.attempts == attempts and len(r.images) == images
                assert list(r.missing) == ([] if images else ["2"])  # rerun when the prompt is known


def test_the_command_line_saves_and_counts_every_kind(tmp_path, capsys):
    from comfynb.cli import main

    workflow = Path(__file__).resolve().parents[1] / "comfynb" / "sim" / "workflows" / "video_audio.json"
    assert main(["run", str(workflow), "--simulate", "--grid", "KSampler.seed=1,2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "images/ (12 files), videos/ (2 files), audio/ (2 files), texts/ (2 files)" in out
    header = next(line for line in out.splitlines() if line.strip().startswith("KSampler.seed"))
    assert header.split() == ["KSampler.seed", "status", "run_time", "images", "videos", "audio", "texts"]
    assert decoded((tmp_path / "videos" / "00001.mp4").read_bytes())[0] == 6
