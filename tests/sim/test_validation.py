"""validate_prompt against the 400 bodies recorded from ComfyUI 0.8.0 (trace d) and the workflows."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from comfynb.sim.library import load_workflow
from comfynb.sim.nodes import default_nodes
from comfynb.sim.validation import validate_prompt

CASES = json.loads((Path(__file__).parent / "fixtures" / "d_validation_bodies.json").read_text())
NODES = default_nodes()


def body(prompt, targets=None, nodes=NODES) -> tuple[bool, dict, list]:
    """What the server answers: the 400 body, or the 200 body's node_errors (+ outputs)."""
    valid, error, outputs, node_errors = validate_prompt(prompt, nodes, targets)
    if valid:
        return True, {"node_errors": node_errors}, outputs
    return False, {"error": error, "node_errors": node_errors}, outputs


def without_tracebacks(value):
    if isinstance(value, dict):
        return {k: (["<traceback>"] if k == "traceback" else without_tracebacks(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [without_tracebacks(v) for v in value]
    return value


@pytest.mark.parametrize("case", CASES, ids=[c["note"][:40] for c in CASES])
def test_recorded_400_bodies(case):
    valid, got, outputs = body(copy.deepcopy(case["prompt"]))
    assert case["status"] == 400 and not valid and outputs == []
    assert without_tracebacks(got) == case["body"]
    # key order too: clients printing bodies see the same text
    assert json.dumps(without_tracebacks(got)) == json.dumps(case["body"])


def test_exception_tracebacks_are_lists_of_frames():
    _, got, _ = body({"2": {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "filename_prefix": "x"}}})
    tb = got["node_errors"]["2"]["errors"][0]["extra_info"]["traceback"]
    assert tb and all(isinstance(line, str) and line.startswith("  File ") for line in tb)


@pytest.mark.parametrize(
    "name",
    [
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
    ],
)
def test_runnable_workflows_validate(name):
    prompt = load_workflow(name)
    valid, got, outputs = body(prompt)
    assert valid and got == {"node_errors": {}}
    assert sorted(outputs) == sorted(k for k, v in prompt.items() if NODES[v["class_type"]].output_node)
    assert prompt == load_workflow(name)


def test_default_graph_with_every_listed_checkpoint():
    nodes = default_nodes(["my_model.safetensors", "other.ckpt"])
    for ckpt in ("my_model.safetensors", "other.ckpt"):
        prompt = load_workflow("default_txt2img")
        prompt["4"]["inputs"]["ckpt_name"] = ckpt
        assert body(prompt, nodes=nodes)[0]
    valid, got, _ = body(load_workflow("default_txt2img"), nodes=nodes)
    assert not valid and got["node_errors"]["4"]["errors"][0]["details"] == (
        "ckpt_name: 'v1-5-pruned-emaonly-fp16.safetensors' not in ['my_model.safetensors', 'other.ckpt']"
    )


def test_partial_failure_is_valid_with_node_errors():
    prompt = load_workflow("multi_output")
    prompt["4"]["inputs"]["filename_prefix"] = ["9"]  # bad link: length 1
    valid, got, outputs = body(prompt)
    assert valid and sorted(outputs) == ["3", "5"]
    assert got["node_errors"] == {
        "4": {
            "errors": [
                {
                    "type": "bad_linked_input",
                    "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    "details": "filename_prefix",
                    "extra_info": {
                        "input_name": "filename_prefix",
                        "input_config": NODES["SaveImage"].info["input"]["required"]["filename_prefix"],
                        "received_value": ["9"],
                    },
                }
            ],
            "dependent_outputs": ["4"],
            "class_type": "SaveImage",
        }
    }


def test_only_nodes_with_their_own_errors_are_listed():
    prompt = load_workflow("tiny_chain")
    prompt["1"]["inputs"]["width"] = 0
    valid, got, _ = body(prompt)
    assert not valid and list(got["node_errors"]) == ["1"]
    assert got["node_errors"]["1"]["dependent_outputs"] == ["5"]
    assert got["error"]["details"] == ""
    assert got["node_errors"]["1"]["errors"] == [
        {
            "type": "value_smaller_than_min",
            "message": "Value 0 smaller than min of 1",
            "details": "width",
            "extra_info": {
                "input_name": "width",
                "input_config": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
                "received_value": 0,
            },
        }
    ]


def test_dependent_outputs_follow_comfyui_order():
    """ComfyUI appends each failing output to every failed node validated so far (trace d shows it)."""
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a"}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "5": {"class_type": "ImageBlur", "inputs": {"image": ["3", 0], "blur_radius": 1, "sigma": 99.0}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "b"}},
    }
    valid, got, outputs = body(prompt)
    assert valid and outputs == ["4"]
    assert got["node_errors"]["1"]["dependent_outputs"] == ["2", "6"]
    assert got["node_errors"]["5"]["dependent_outputs"] == ["6"]
    assert got["node_errors"]["5"]["errors"][0]["message"] == "Value 99.0 bigger than max of 10.0"


def test_long_lists_are_summarised():
    prompt = load_workflow("ksampler_random")
    prompt["3"]["inputs"]["sampler_name"] = "foo"
    prompt["3"]["inputs"]["scheduler"] = "bar"
    valid, got, _ = body(prompt)
    errors = got["node_errors"]["3"]["errors"]
    assert not valid and [e["type"] for e in errors] == ["value_not_in_list", "value_not_in_list"]
    count = len(NODES["KSampler"].info["input"]["required"]["sampler_name"][0])
    assert count > 20 and errors[0]["details"] == f"sampler_name: 'foo' not in (list of length {count})"
    assert errors[0]["extra_info"] == {"input_name": "sampler_name", "input_config": None, "received_value": "foo"}
    assert errors[1]["details"].startswith("scheduler: 'bar' not in ['simple', 'sgm_uniform'")
    assert errors[1]["extra_info"]["input_config"] == NODES["KSampler"].info["input"]["required"]["scheduler"]


def test_v3_combo_values_are_checked():
    prompt = load_workflow("runtime_error")
    prompt["2"]["inputs"]["channel"] = "purple"
    _, got, _ = body(prompt)
    assert got["node_errors"]["2"]["errors"][0]["extra_info"]["input_config"] == [
        "COMBO",
        {"options": ["red", "green", "blue", "alpha"]},
    ]


def test_literals_are_converted_in_place_like_comfyui():
    prompt = load_workflow("tiny")
    prompt["1"]["inputs"].update(width="64", height=64.9, color={"__value__": 5})
    prompt["2"]["inputs"]["filename_prefix"] = 7
    assert body(prompt)[0]
    assert prompt["1"]["inputs"] == {"width": 64, "height": 64, "batch_size": 1, "color": 5}
    assert prompt["2"]["inputs"]["filename_prefix"] == "7"
    prompt = load_workflow("slow")
    prompt["2"]["inputs"]["sigma"] = "x"
    _, got, _ = body(prompt)
    assert got["node_errors"]["2"]["errors"][0]["message"] == "Failed to convert an input value to a FLOAT value"
    assert got["node_errors"]["2"]["errors"][0]["details"] == "sigma, x, could not convert string to float: 'x'"


def test_cycles_fail_as_exceptions_during_validation():
    prompt = {
        "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    valid, got, _ = body(prompt)
    assert not valid and list(got["node_errors"]) == ["3"]
    error = got["node_errors"]["3"]["errors"][0]
    assert error["type"] == "exception_during_validation"
    assert error["extra_info"]["exception_type"] == "RecursionError"
    assert error["details"].startswith("maximum recursion depth exceeded")
    assert got["error"]["details"] == f"Exception when validating node: {error['details']}"
    self_loop = {
        "1": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    error = body(self_loop)[1]["node_errors"]["2"]["errors"][0]
    assert error["details"] == "maximum recursion depth exceeded (cycle 1 -> 1)"


def test_dangling_link_below_an_output_is_an_inner_exception():
    prompt = load_workflow("tiny_chain")
    prompt["2"]["inputs"]["image"] = ["42", 0]
    valid, got, _ = body(prompt)
    # the node whose own validation raised is blamed, as in ComfyUI
    assert not valid and list(got["node_errors"]) == ["2"]
    error = got["node_errors"]["2"]["errors"][0]
    assert (error["type"], error["message"], error["details"]) == (
        "exception_during_inner_validation",
        "Exception when validating inner node",
        "'42'",
    )
    assert error["extra_info"]["linked_node"] == ["2", 0] and error["extra_info"]["exception_type"] == "KeyError"
    # a bad output slot is an exception too (tuple index)
    prompt = load_workflow("tiny")
    prompt["2"]["inputs"]["images"] = ["1", 3]
    error = body(prompt)[1]["node_errors"]["2"]["errors"][0]
    assert (error["type"], error["details"]) == ("exception_during_validation", "tuple index out of range")


def test_missing_required_inputs_and_optional_ones():
    prompt = {
        "1": {"class_type": "KSampler", "inputs": {"seed": 1}},
        "2": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
    }
    valid, got, _ = body(prompt)
    assert not valid
    assert [e["details"] for e in got["node_errors"]["1"]["errors"]] == [
        "model",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "positive",
        "negative",
        "latent_image",
        "denoise",
    ]
    assert [e["details"] for e in got["node_errors"]["2"]["errors"]] == ["vae"]
    assert [e["details"] for e in got["node_errors"]["3"]["errors"]] == ["filename_prefix"]
    assert got["error"]["details"] == "Required input is missing: filename_prefix"


def test_partial_execution_targets():
    prompt = load_workflow("multi_output")
    valid, _, outputs = body(prompt, ["4", "1", "nope"])
    assert valid and outputs == ["4"]
    valid, got, _ = body(load_workflow("multi_output"), ["1"])
    assert not valid and got["error"]["type"] == "prompt_no_outputs"


def test_load_image_custom_validation(tmp_path):
    nodes = default_nodes(input_dir=tmp_path)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    valid, got, _ = body(prompt, nodes=nodes)
    assert not valid and got["node_errors"]["1"]["errors"] == [
        {
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": "image - Invalid image file: missing.png",
            "extra_info": {"input_name": "image"},
        }
    ]
    (tmp_path / "missing.png").write_bytes(b"")
    assert body(prompt, nodes=nodes)[0]
    prompt["1"]["inputs"]["image"] = "../escape.png"
    assert not body(prompt, nodes=nodes)[0]


def test_prompts_that_are_not_objects_raise():
    with pytest.raises(TypeError):
        validate_prompt([1, 2], NODES)
    assert validate_prompt({"1": "text"}, NODES)[1]["type"] == "invalid_prompt"
