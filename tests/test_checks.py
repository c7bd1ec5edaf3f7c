"""Checks before sending: every row of a sweep against the simulator's /object_info, before any POST."""

import json
from pathlib import Path

import pytest

import comfynb as cn
from comfynb.checks import check_prompt, check_value
from comfynb.errors import WorkflowError
from comfynb.sim.library import load_workflow

OBJECT_INFO = json.loads((Path(__file__).resolve().parent / "fixtures" / "object_info_0.8.0.json").read_text())


@pytest.fixture(scope="module")
def session():
    with cn.Session.simulated(progress=False) as s:
        yield s


def posts(session) -> int:
    return session.simulator.engine.counter  # numbers are consumed by every POST /prompt, even rejected ones


def test_one_bad_value_among_100_rows_fails_before_any_post(session):
    wf = cn.Workflow.load(load_workflow("default_txt2img"))
    cfgs = [7.0] * 100
    cfgs[37] = 150.0
    before, jobs = posts(session), len(session.jobs)
    with pytest.raises(WorkflowError) as err:
        session.sweep(wf, zip={"KSampler.cfg": cfgs, "KSampler.seed": list(range(100))})
    text = str(err.value)
    assert "1 of 100 rows" in text and "nothing was sent" in text
    assert "row 37 " in text and "'KSampler.cfg' = 150.0 is bigger than the maximum 100" in text
    assert "row 36 " not in text
    assert posts(session) == before and len(session.jobs) == jobs


def test_every_bad_row_is_listed_with_close_matches(session):
    wf = cn.Workflow.load(load_workflow("default_txt2img"))
    before = posts(session)
    with pytest.raises(WorkflowError) as err:
        session.sweep(
            wf,
            grid={
                "KSampler.sampler_name": ["euler", "eulr_ancestral"],
                "CheckpointLoaderSimple.ckpt_name": ["nope.ckpt"],
            },
        )
    text = str(err.value)
    assert "2 of 2 rows" in text
    assert "did you mean 'euler_ancestral'" in text and "'nope.ckpt' is not offered by the server" in text
    assert posts(session) == before


def test_a_good_sweep_still_runs_and_check_can_be_skipped(session):
    wf = cn.Workflow.load(load_workflow("tiny"))
    df = session.sweep(wf, grid={"EmptyImage.width": [64, 80]}, concurrency=2).result(timeout=60)
    assert list(df.status) == ["success", "success"]
    before = posts(session)
    bad = session.sweep(wf, grid={"EmptyImage.width": [0]}, check=False)  # the server refuses it instead
    bad.result(timeout=60)
    assert posts(session) == before + 1 and bad.jobs[0].status == "error"


def test_wf_check_names_every_problem(session):
    wf = cn.Workflow.load(load_workflow("default_txt2img"))
    assert wf.check(session) is wf
    wf["KSampler.steps"] = 0
    wf["KSampler.scheduler"] = "karas"
    with pytest.raises(WorkflowError) as err:
        wf.check(session)
    text = str(err.value)
    assert "2 problem(s)" in text and "steps: 0 is smaller than the minimum 1" in text and "'karras'" in text


def test_link_types_required_inputs_and_steps():
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 500, "height": 512, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 1]}},
    }
    info = {k: OBJECT_INFO[k] for k in ("CheckpointLoaderSimple", "EmptyLatentImage", "VAEDecode")}
    info["CheckpointLoaderSimple"] = json.loads(json.dumps(info["CheckpointLoaderSimple"]))
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = ["sd\\x.safetensors"]
    problems, _ = check_prompt(prompt, info)
    text = "\n".join(problems)
    assert "required input 'vae' is missing" in text
    assert "takes LATENT but is linked to a CLIP" in text
    assert "500 is not a multiple of the step 8" in text
    assert "'x.safetensors' is not offered" in text
    assert check_value(["sd\\x.safetensors"], {}, "sd/x.safetensors", windows=True) == (None, "sd\\x.safetensors")
    assert check_value(["sd\\x.safetensors"], {}, "sd/x.safetensors")[0] is not None


def test_workflow_key_completions_and_options(session):
    wf = cn.Workflow.load(load_workflow("default_txt2img"), session=session)
    keys = wf._ipython_key_completions_()
    assert "KSampler.seed" in keys and "KSampler@bypass" in keys
    options = wf.options("KSampler.sampler_name")
    assert "euler" in options._ipython_key_completions_() and options["euler"] == "euler"
    with pytest.raises(WorkflowError, match="Did you mean 'euler'"):
        options["eulr"]
    with pytest.raises(WorkflowError, match="not a choice input"):
        wf.options("KSampler.steps")


def test_a_sweep_with_no_server_up_says_how_to_queue_anyway():
    wf = cn.Workflow.load(load_workflow("tiny"))
    session = cn.Session("http://127.0.0.1:1", progress=False, retries=0)
    try:
        with pytest.raises(cn.ServerUnavailable, match="check=False"):
            session.sweep(wf, grid={"EmptyImage.width": [64]})
    finally:
        session.close()


def test_a_sweep_takes_a_ui_format_file(session, tmp_path):
    from comfynb.sim.library import ui_workflow_path

    df = session.sweep(
        str(ui_workflow_path("default_txt2img")),
        grid={"KSampler.steps": [2, 3], "EmptyLatentImage.width": [64]},
        concurrency=2,
    ).result(timeout=60)
    assert list(df.status) == ["success", "success"]


def test_a_model_added_after_the_first_check_is_found(tmp_path):
    wf = cn.Workflow.load(load_workflow("default_txt2img"))
    with cn.Session.simulated(progress=False, checkpoints=["a.safetensors"]) as s:
        wf["CheckpointLoaderSimple.ckpt_name"] = "a.safetensors"
        wf.check(s)  # reads /object_info once
        node = s.simulator.nodes["CheckpointLoaderSimple"]
        node.info["input"]["required"]["ckpt_name"][0].append("new.safetensors")  # the server gets a model
        wf["CheckpointLoaderSimple.ckpt_name"] = "new.safetensors"
        wf.check(s)  # read again before refusing
        df = s.sweep(wf, grid={"KSampler.steps": [1]}).result(timeout=60)
        assert list(df.status) == ["success"]


def test_dynamic_combo_inputs_are_checked_against_the_chosen_option():
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {
            "class_type": "ResizeImageMaskNode",
            "inputs": {
                "input": ["1", 0],
                "resize_type": "scale dimensions",
                "resize_type.width": 99999,
                "resize_type.crop": "middle",
                "scale_method": "area",
            },
        },
    }
    problems, _ = check_prompt(prompt, OBJECT_INFO)
    text = "\n".join(problems)
    assert "resize_type.width: 99999 is bigger than the maximum 16384" in text
    assert "resize_type.crop: 'middle' is not offered" in text and len(problems) == 2
    prompt["2"]["inputs"]["input"] = ["3", 0]  # a match-type input takes its template's allowed types only
    prompt["3"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    problems, _ = check_prompt(prompt, OBJECT_INFO)
    assert any("takes IMAGE,MASK but is linked to a LATENT" in p for p in problems)
