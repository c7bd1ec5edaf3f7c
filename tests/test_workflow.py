"""Workflow: loading and checking API-format graphs, addressing inputs, and every error message."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from comfynb.errors import AddressError, ComfyError, WorkflowError
from comfynb.workflow import Node, Workflow

_DIRS = [Path(__file__).resolve().parents[1] / "comfynb" / "sim" / "workflows", Path("/work/shared/workflows")]
ALL_SHARED = [
    "bad_node_type.json",
    "bad_validation.json",
    "batch.json",
    "default_txt2img.json",
    "ksampler_random.json",
    "multi_output.json",
    "no_outputs.json",
    "preview.json",
    "runtime_error.json",
    "slow.json",
    "tiny.json",
    "tiny_chain.json",
    "ws_image.json",
]


def shared(name: str) -> Path:
    for folder in _DIRS:
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"shared workflow {name} not found in {[str(d) for d in _DIRS]}")


@pytest.fixture
def txt2img() -> Workflow:
    return Workflow.load(shared("default_txt2img.json"))


def graph(**nodes) -> dict:
    """A graph from node id -> (class_type, inputs[, title])."""
    out = {}
    for nid, (class_type, inputs, *title) in nodes.items():
        out[nid] = {"class_type": class_type, "inputs": inputs}
        if title:
            out[nid]["_meta"] = {"title": title[0]}
    return out


# -- loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_SHARED)
def test_every_shared_workflow_loads_and_round_trips(name):
    path = shared(name)
    wf = Workflow.load(path)
    assert wf.to_api() == json.loads(path.read_text())
    assert len(wf) == len(json.loads(path.read_text()))


def test_load_accepts_path_str_dict_json_string_and_workflow(txt2img):
    path = shared("default_txt2img.json")
    text = path.read_text()
    assert Workflow.load(str(path)) == txt2img
    assert Workflow.load(text) == txt2img
    assert Workflow.load("  \n" + text) == txt2img
    assert Workflow.load(json.loads(text)) == txt2img
    assert Workflow(json.loads(text)) == txt2img
    again = Workflow.load(txt2img)
    assert again == txt2img and again is not txt2img
    again["KSampler.seed"] = 1
    assert txt2img["KSampler.seed"] == 156680208700286


def test_loading_a_dict_does_not_alias_it():
    data = json.loads(shared("tiny.json").read_text())
    wf = Workflow.load(data)
    data["1"]["inputs"]["width"] = 999
    assert wf["EmptyImage.width"] == 64
    wf["EmptyImage.height"] = 7
    assert data["1"]["inputs"]["height"] == 64


@pytest.mark.parametrize(
    "ui",
    [
        {"last_node_id": 9, "last_link_id": 9, "nodes": [], "links": [], "version": 0.4},
        {"nodes": [{"id": 3, "type": "KSampler"}], "links": [[1, 4, 0, 3, 0, "MODEL"]]},
        {"last_node_id": 1},
    ],
)
def test_ui_format_is_refused_with_how_to_export(ui):
    with pytest.raises(WorkflowError) as e:
        Workflow.load(ui)
    msg = str(e.value)
    assert "UI format" in msg and "API format" in msg and "session=" in msg and "object_info=" in msg
    assert "Dev mode" in msg and "Export (API)" in msg and "Save (API)" in msg


def test_ui_format_file_error_names_the_file(tmp_path):
    path = tmp_path / "my_ui_workflow.json"
    path.write_text(json.dumps({"last_node_id": 2, "nodes": [], "links": []}))
    with pytest.raises(WorkflowError, match="my_ui_workflow.json.*UI format.*Export \\(API\\)"):
        Workflow.load(path)


@pytest.mark.parametrize(
    "bad, expected",
    [
        ([1, 2], r"must be a JSON object mapping node ids to nodes \(API format\), not a list"),
        ({}, r"has no nodes.*Export \(API\)"),
        (
            {3: {"class_type": "X", "inputs": {}}},
            r"node id 3 \(int\) must be a string: API format keys nodes by strings, like \"3\"",
        ),
        ({"3": "KSampler"}, r"node '3' must be an object \{\"class_type\".*not a str"),
        ({"3": {"inputs": {}}}, r"node '3' has no class_type.*\{\"class_type\": \"...\", \"inputs\".*Export \(API\)"),
        ({"3": {"class_type": 5, "inputs": {}}}, r"node '3' has an invalid class_type 5"),
        ({"3": {"class_type": "", "inputs": {}}}, r"node '3' has an invalid class_type ''"),
        ({"3": {"class_type": "X"}}, r"node '3' \(X\) has no inputs.*use \{\} for a node without inputs"),
        ({"3": {"class_type": "X", "inputs": [1]}}, r"node '3' \(X\) has inputs that are a list.*input name -> value"),
        ({"3": {"class_type": "X", "inputs": {1: 2}}}, r"node '3' \(X\) has an input named 1; input names are strings"),
        (
            {"3": {"class_type": "X", "inputs": {"sizes": [1, 2, 3]}}},
            r"input '3.sizes' \(X\) is the list \[1, 2, 3\].*link is \[node_id, output_index\].*"
            r"wrapped as \{\"__value__\": \[...\]\}",
        ),
        (
            {"3": {"class_type": "X", "inputs": {"image": ["3", -1]}}},
            r"input '3.image' \(X\) is the list \['3', -1\], which ComfyUI reads as a link but is not one",
        ),
        (
            {"8": {"class_type": "VAEDecode", "inputs": {"samples": ["99", 0]}}},
            r"input '8.samples' \(VAEDecode\) links to node '99', which is not in the workflow",
        ),
        (
            {"3": {"class_type": "X", "inputs": {"seed": object()}}},
            r"input '3.seed' \(X\): <object object at .*> of type object is not JSON-serialisable.*convert it first",
        ),
        (
            {"3": {"class_type": "X", "inputs": {"cfg": math.nan}}},
            r"input '3.cfg' \(X\): nan is not valid JSON; use a finite number",
        ),
        (
            {"3": {"class_type": "X", "inputs": {}, "_meta": {"title": {1, 2}}}},
            r"node '3' \(X\) key '_meta'.*of type set is not JSON-serialisable",
        ),
    ],
)
def test_malformed_graphs_name_the_node_and_the_problem(bad, expected):
    with pytest.raises(WorkflowError, match=expected):
        Workflow(bad)


def test_bad_sources(tmp_path):
    with pytest.raises(
        WorkflowError,
        match=r"no such file: '.*nope.json'.*a path to a workflow .json file or to an image/video ComfyUI made, a dict",
    ):
        Workflow.load(tmp_path / "nope.json")
    with pytest.raises(WorkflowError, match=r"no such file: 'KSampler'"):
        Workflow.load("KSampler")
    with pytest.raises(WorkflowError, match=r"the JSON string is not valid JSON: .* at line 1 column \d+"):
        Workflow.load('{"3": {"class_type": ')
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "3": {"class_type": "X",}\n}')
    with pytest.raises(WorkflowError, match=r"'.*broken.json' is not valid JSON: .* at line 2 column"):
        Workflow.load(broken)
    with pytest.raises(WorkflowError, match=r"cannot load a workflow from int: pass a path"):
        Workflow.load(42)
    with pytest.raises(WorkflowError, match=r"cannot read workflow file '.*'"):
        Workflow.load(tmp_path)  # a directory
    (tmp_path / "latin1.json").write_bytes(b'{"1": {"class_type": "\xe9", "inputs": {}}}')
    with pytest.raises(WorkflowError, match=r"cannot read workflow file"):
        Workflow.load(tmp_path / "latin1.json")


def test_errors_are_in_the_hierarchy():
    with pytest.raises(ComfyError):
        Workflow({})
    with pytest.raises(ValueError):  # WorkflowError is a ValueError
        Workflow({})
    wf = Workflow.load(shared("tiny.json"))
    with pytest.raises(KeyError):  # AddressError is a KeyError, and a WorkflowError
        wf["Nope.x"]
    with pytest.raises(WorkflowError):
        wf["Nope.x"]


def test_numpy_values_become_plain_json():
    wf = Workflow(graph(**{"1": ("X", {"a": np.int64(3), "b": np.float32(0.5), "c": {"__value__": np.arange(3)}})}))
    api = wf.to_api()
    assert api["1"]["inputs"] == {"a": 3, "b": 0.5, "c": {"__value__": [0, 1, 2]}}
    assert type(api["1"]["inputs"]["a"]) is int and type(api["1"]["inputs"]["b"]) is float
    wf["X.a"] = np.int64(7)
    wf["X.b"] = np.arange(2)
    assert wf.to_api()["1"]["inputs"]["a"] == 7 and type(wf["X.a"]) is int
    assert wf.to_api()["1"]["inputs"]["b"] == {"__value__": [0, 1]}
    json.dumps(wf.to_api())


# -- the graph as a whole ----------------------------------------------------------------------


def test_to_api_is_a_deep_json_ready_copy(txt2img):
    api = txt2img.to_api()
    assert json.loads(json.dumps(api)) == api
    api["3"]["inputs"]["seed"] = 0
    api["3"]["inputs"]["model"][0] = "999"
    api["6"]["_meta"]["title"] = "changed"
    assert txt2img["KSampler.seed"] == 156680208700286
    assert txt2img.to_api()["3"]["inputs"]["model"] == ["4", 0]
    assert txt2img.nodes["6"].title == "CLIP Text Encode (Prompt)"


def test_copy_is_independent_both_ways(txt2img):
    for clone in (txt2img.copy(), copy.copy(txt2img), copy.deepcopy(txt2img)):
        assert clone == txt2img and clone is not txt2img
        clone["KSampler.seed"] = 1
        assert txt2img["KSampler.seed"] == 156680208700286
        txt2img["KSampler.steps"] = 5
        assert clone["KSampler.steps"] == 20
        txt2img["KSampler.steps"] = 20


def test_wrapped_list_values_are_not_shared_between_copies():
    wf = Workflow(graph(**{"1": ("X", {"sizes": {"__value__": [1, 2]}})}))
    clone = wf.copy()
    got = clone["X.sizes"]
    got.append(3)
    assert clone["X.sizes"] == [1, 2] and wf["X.sizes"] == [1, 2]
    clone.to_api()["1"]["inputs"]["sizes"]["__value__"].append(3)
    assert wf["X.sizes"] == [1, 2]


def test_save_writes_api_json_that_loads_back(tmp_path, txt2img):
    txt2img["6.text"] = "a red fox, ünïcode"
    out = txt2img.save(tmp_path / "out.json")
    assert out == tmp_path / "out.json"
    assert json.loads(out.read_text(encoding="utf-8"))["6"]["inputs"]["text"] == "a red fox, ünïcode"
    assert Workflow.load(out) == txt2img
    assert Workflow.load(str(out)) == txt2img


def test_len_iteration_nodes_and_equality(txt2img):
    assert len(txt2img) == 7
    assert list(txt2img) == ["3", "4", "5", "6", "7", "8", "9"]
    node = txt2img.nodes["6"]
    assert node == Node("6", "CLIPTextEncode", "CLIP Text Encode (Prompt)", node.inputs)
    assert node.inputs["clip"] == ["4", 1]
    txt2img["6.text"] = "live"
    assert node.inputs["text"] == "live"  # a view, not a snapshot
    with pytest.raises(TypeError):
        node.inputs["text"] = "x"
    with pytest.raises(TypeError):
        txt2img.nodes["6"] = node
    assert Workflow.load(shared("ksampler_random.json")).nodes["3"].title is None
    assert txt2img != Workflow.load(shared("tiny.json"))
    assert txt2img != txt2img.to_api()
    with pytest.raises(TypeError):
        hash(txt2img)


def test_repr_is_short_even_for_big_graphs(txt2img):
    assert repr(txt2img).startswith("<Workflow 7 nodes: 3 KSampler, 4 CheckpointLoaderSimple")
    assert "+1 more" in repr(txt2img)
    assert repr(Workflow.load(shared("tiny.json"))) == "<Workflow 2 nodes: 1 EmptyImage, 2 SaveImage>"
    big = Workflow({str(i): {"class_type": "PrimitiveString", "inputs": {"value": "x" * 10_000}} for i in range(500)})
    assert len(repr(big)) < 200 and "500 nodes" in repr(big) and "+494 more" in repr(big)


def test_output_nodes():
    multi = Workflow.load(shared("multi_output.json"))
    assert multi.output_nodes() == ["3", "4", "5"]
    info = {"SaveImage": {"output_node": True}, "PreviewImage": {"output_node": True}, "EmptyImage": {}}
    assert multi.output_nodes(info) == ["3", "4", "5"]
    no_outputs = Workflow.load(shared("no_outputs.json"))
    assert no_outputs.output_nodes() == ["2"]  # a sink, but not an output node:
    assert no_outputs.output_nodes({"ImageInvert": {"output_node": False}}) == []
    assert Workflow.load(shared("bad_node_type.json")).output_nodes({"EmptyImage": {}}) == []


# -- addressing ------------------------------------------------------------------------------


def test_address_by_id_title_and_unique_class(txt2img):
    assert txt2img["3.seed"] == 156680208700286
    assert txt2img["KSampler.seed"] == 156680208700286  # title (and class)
    assert txt2img["Load Checkpoint.ckpt_name"] == "v1-5-pruned-emaonly-fp16.safetensors"  # title
    assert txt2img["CheckpointLoaderSimple.ckpt_name"] == "v1-5-pruned-emaonly-fp16.safetensors"  # class
    assert txt2img.resolve("Empty Latent Image.width") == ("5", "width")
    assert txt2img.resolve("6.text") == ("6", "text")
    assert txt2img["KSampler.model"] == ["4", 0]  # a linked input reads as its link


def test_titles_with_dots_match_the_longest_known_node_name():
    wf = Workflow(
        graph(
            **{
                "1": ("KSampler", {"seed": 1}, "My.Sampler v1.5"),
                "2": ("KSampler", {"seed": 2}, "My"),
                "3": ("X", {"a.b": 3, "c": 4}, "Odd"),
                "15.0.3": ("KSampler", {"seed": 5}),
            }
        )
    )
    assert wf.resolve("My.Sampler v1.5.seed") == ("1", "seed")
    assert wf.resolve("My.seed") == ("2", "seed")
    assert wf.resolve("Odd.a.b") == ("3", "a.b")  # no node "Odd.a", so the input has the dot
    assert wf.resolve("15.0.3.seed") == ("15.0.3", "seed")  # expanded-node ids contain dots
    with pytest.raises(AddressError, match=r"node 1 \(KSampler 'My.Sampler v1.5'\) has no input 'sed'"):
        wf["My.Sampler v1.5.sed"]


def test_precedence_id_then_title_then_class():
    wf = Workflow(
        graph(
            **{
                "3": ("KSampler", {"seed": 3}, "Main"),
                "5": ("KSamplerAdvanced", {"noise_seed": 5}, "3"),  # a title that is another node's id
                "7": ("SaveImage", {"filename_prefix": "x"}, "KSampler"),  # a title that is a class name
            }
        )
    )
    assert wf.resolve("3.seed") == ("3", "seed")  # the id wins over the title "3"
    assert wf.resolve("KSampler.filename_prefix") == ("7", "filename_prefix")  # title wins over class
    with pytest.raises(AddressError, match=r"node 7 \(SaveImage 'KSampler'\) has no input 'seed'.*filename_prefix"):
        wf["KSampler.seed"]
    assert wf.resolve("Main.seed") == ("3", "seed")
    assert wf.resolve("KSamplerAdvanced.noise_seed") == ("5", "noise_seed")


def test_duplicate_titles_are_ambiguous_and_list_candidates_by_id(txt2img):
    with pytest.raises(AddressError) as e:
        txt2img["CLIP Text Encode (Prompt).text"]
    msg = str(e.value)
    assert "'CLIP Text Encode (Prompt).text' is ambiguous" in msg
    assert "title 'CLIP Text Encode (Prompt)' names 2 nodes" in msg
    assert "Address one by id" in msg
    assert "'6.text'  node 6 (CLIPTextEncode 'CLIP Text Encode (Prompt)'), text='beautiful scenery" in msg
    assert "'7.text'  node 7 (CLIPTextEncode 'CLIP Text Encode (Prompt)'), text='text, watermark'" in msg
    assert "distinct titles" in msg
    assert txt2img["6.text"].startswith("beautiful") and txt2img["7.text"] == "text, watermark"


def test_duplicate_classes_are_ambiguous(txt2img):
    with pytest.raises(AddressError, match=r"(?s)class_type 'CLIPTextEncode' names 2 nodes.*'6.text'.*'7.text'"):
        txt2img["CLIPTextEncode.text"]
    with pytest.raises(AddressError, match=r"'6.clip'  node 6 .*\n  '7.clip'  node 7 [^,\n]*\n"):
        txt2img.set("CLIPTextEncode.clip", 1)  # linked inputs show no value


def test_an_ambiguous_title_does_not_fall_back_to_the_class():
    wf = Workflow(
        graph(**{"1": ("KSampler", {"seed": 1}, "KSampler"), "2": ("KSamplerAdvanced", {"seed": 2}, "KSampler")})
    )
    expected = r"(?s)title 'KSampler' names 2 nodes.*'1.seed'  node 1 \(KSampler\), seed=1.*'2.seed'"
    with pytest.raises(AddressError, match=expected):
        wf["KSampler.seed"]


def test_unknown_node_suggests_close_addresses_and_lists_nodes(txt2img):
    with pytest.raises(AddressError) as e:
        txt2img["KSamplr.seed"]
    msg = str(e.value)
    assert msg.startswith("no node is named 'KSamplr' (address 'KSamplr.seed'). Did you mean 'KSampler.seed'")
    assert "node 4 (CheckpointLoaderSimple 'Load Checkpoint')" in msg
    assert "its id, its title, or its class_type if that is unique" in msg
    assert "wf.parameters() lists every settable address" in msg
    with pytest.raises(AddressError, match=r"Did you mean 'KSampler.seed'"):
        txt2img["ksampler.seed"]  # case matters, but the suggestion finds it
    with pytest.raises(AddressError, match=r"Did you mean 'Empty Latent Image.width'"):
        txt2img["Empty latent image.width"]
    with pytest.raises(AddressError, match=r"no node is named 'Nothing'") as e:
        txt2img["Nothing.at_all"]
    assert "Did you mean" not in str(e.value)


def test_unknown_node_list_is_truncated_for_big_graphs():
    big = Workflow({str(i): {"class_type": "X", "inputs": {"v": i}} for i in range(100)})
    with pytest.raises(AddressError, match=r"node 29 \(X\); \.\.\. 70 more\. wf.parameters\(\)"):
        big["nope.v"]


def test_long_candidate_lists_are_truncated():
    many = Workflow({str(i): {"class_type": "X", "inputs": {"v": i}} for i in range(30)})
    with pytest.raises(AddressError) as e:
        many["X.v"]
    msg = str(e.value)
    assert "class_type 'X' names 30 nodes" in msg and "'9.v'  node 9 (X), v=9" in msg
    assert "'10.v'" not in msg and "  ... 20 more\n" in msg
    with pytest.raises(AddressError, match=r"Did you mean '0.v', '1.v', '2.v', '3.v', '4.v' or 25 more\?$"):
        many["v"]


def test_unknown_input_suggests_and_lists_the_nodes_inputs(txt2img):
    with pytest.raises(AddressError) as e:
        txt2img["KSampler.sed"]
    msg = str(e.value)
    assert msg.startswith("node 3 (KSampler) has no input 'sed' (address 'KSampler.sed'). Did you mean 'KSampler.seed'")
    assert "Its inputs: seed, steps, cfg, sampler_name, scheduler, denoise, model (linked)" in msg
    with pytest.raises(AddressError, match=r"has no input 'zzz'.*Its inputs: ckpt_name\.$"):
        txt2img["Load Checkpoint.zzz"]
    with pytest.raises(AddressError, match=r"has no input ''"):
        txt2img["KSampler."]
    empty = Workflow(graph(**{"1": ("Nothing", {})}))
    with pytest.raises(AddressError, match=r"node 1 \(Nothing\) has no input 'x'.*It has no inputs\."):
        empty["1.x"]


def test_address_without_a_dot(txt2img):
    expected = r"'seed' is not an address: write '<node>.<input>'.*Did you mean 'KSampler.seed'\?"
    with pytest.raises(AddressError, match=expected):
        txt2img["seed"]
    with pytest.raises(AddressError, match=r"Did you mean '6.text' or '7.text'\?"):
        txt2img["text"]
    expected = r"'3' is a node, not an input: address an input as '3.<input>'.*Its inputs: seed"
    with pytest.raises(AddressError, match=expected):
        txt2img["3"]
    with pytest.raises(AddressError, match=r"'zzz' is not an address") as e:
        txt2img["zzz"]
    assert "Did you mean" not in str(e.value)


def test_non_string_address(txt2img):
    with pytest.raises(AddressError, match=r"an address is a string like 'KSampler.seed'.*got int 3"):
        txt2img[3]
    with pytest.raises(AddressError, match=r"got tuple \('3', 'seed'\)"):
        txt2img.get(("3", "seed"))


def test_get_and_contains(txt2img):
    assert txt2img.get("KSampler.seed") == 156680208700286
    assert txt2img.get("KSampler.nope") is None
    assert txt2img.get("Nope.seed", 5) == 5
    assert txt2img.get("seed", 5) == 5
    with pytest.raises(AddressError, match="ambiguous"):
        txt2img.get("CLIPTextEncode.text", "x")  # a default would hide the ambiguity
    assert "KSampler.seed" in txt2img and "3.model" in txt2img
    assert "3" in txt2img  # node ids too, so `for nid in wf: assert nid in wf` holds
    assert all(nid in txt2img for nid in txt2img)
    assert "KSampler.nope" not in txt2img and "Nope.seed" not in txt2img
    assert "CLIPTextEncode.text" not in txt2img  # names no single input
    assert 3 not in txt2img and ["3"] not in txt2img


# -- setting ---------------------------------------------------------------------------------


def test_set_literal_values(txt2img):
    txt2img["KSampler.seed"] = 42
    txt2img.set("6.text", "a cat")
    txt2img["Load Checkpoint.ckpt_name"] = "other.safetensors"
    txt2img["KSampler.cfg"] = None
    api = txt2img.to_api()
    assert api["3"]["inputs"]["seed"] == 42
    assert api["6"]["inputs"]["text"] == "a cat"
    assert api["4"]["inputs"]["ckpt_name"] == "other.safetensors"
    assert api["3"]["inputs"]["cfg"] is None


def test_setting_a_linked_input_needs_unlink(txt2img):
    with pytest.raises(WorkflowError) as e:
        txt2img["KSampler.model"] = "x"
    msg = str(e.value)
    assert "'KSampler.model' is linked to output 0 of node 4 (CheckpointLoaderSimple)" in msg
    assert "would cut that link" in msg and "wf.set('KSampler.model', value, unlink=True)" in msg
    assert txt2img["KSampler.model"] == ["4", 0]
    with pytest.raises(WorkflowError, match="is linked"):
        txt2img["KSampler.model"] = ["4", 0]  # a list is a literal (wrapped), never a link
    txt2img.set("KSampler.model", "x", unlink=True)
    assert txt2img.to_api()["3"]["inputs"]["model"] == "x"
    txt2img["KSampler.model"] = "y"  # no longer linked
    assert txt2img["KSampler.model"] == "y"


def test_lists_are_wrapped_only_where_comfyui_needs_it():
    wf = Workflow(graph(**{"1": ("X", {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5})}))
    wf["X.a"] = [1, 2]
    wf["X.b"] = ("4", 0)  # a tuple is a list too: literal, wrapped, never a link
    wf["X.c"] = {"nested": [1, [2]]}
    wf["X.d"] = {"__value__": [9]}  # already wrapped: kept
    wf["X.e"] = []
    inputs = wf.to_api()["1"]["inputs"]
    assert inputs == {
        "a": {"__value__": [1, 2]},
        "b": {"__value__": ["4", 0]},
        "c": {"nested": [1, [2]]},
        "d": {"__value__": [9]},
        "e": {"__value__": []},
    }
    assert wf["X.a"] == [1, 2] and wf["X.b"] == ["4", 0] and wf["X.d"] == [9] and wf["X.e"] == []
    assert wf["X.c"] == {"nested": [1, [2]]}
    wf["X.a"] = wf["X.a"]  # reads and writes round-trip
    assert wf.to_api()["1"]["inputs"]["a"] == {"__value__": [1, 2]}
    assert Workflow(wf.to_api()) == wf  # and the result is a valid graph


def test_set_copies_the_value():
    wf = Workflow(graph(**{"1": ("X", {"a": 1})}))
    value = [1, 2]
    wf["X.a"] = value
    value.append(3)
    assert wf["X.a"] == [1, 2]


@pytest.mark.parametrize(
    "value, expected",
    [
        (object(), r"cannot set 'KSampler.seed': <object object at .*> of type object is not JSON-serialisable"),
        (Path("a.png"), r"cannot set 'KSampler.seed': PosixPath\('a.png'\) of type PosixPath.*e\.g\. str\(path\)"),
        ([1, {2}], r"cannot set 'KSampler.seed': \{2\} of type set is not JSON-serialisable"),
        ({1: "a"}, r"cannot set 'KSampler.seed': \{1: 'a'\} of type dict is not JSON-serialisable"),
        (float("inf"), r"cannot set 'KSampler.seed': inf is not valid JSON; use a finite number"),
        (np.float64("nan"), r"cannot set 'KSampler.seed': nan is not valid JSON"),
    ],
)
def test_non_json_values_are_refused_naming_the_address(txt2img, value, expected):
    with pytest.raises(WorkflowError, match=expected) as e:
        txt2img["KSampler.seed"] = value
    assert "str, int, float, bool, None, or lists and dicts of those" in str(e.value) or "finite" in str(e.value)
    assert txt2img["KSampler.seed"] == 156680208700286  # unchanged


def test_set_on_unknown_address_raises_address_error(txt2img):
    with pytest.raises(AddressError, match="has no input 'sed'"):
        txt2img["KSampler.sed"] = 1
    with pytest.raises(AddressError, match="ambiguous"):
        txt2img["CLIPTextEncode.text"] = "x"


def test_with_values_returns_a_copy_and_leaves_the_original(txt2img):
    new = txt2img.with_values({"KSampler.seed": 1, "6.text": "a fox", "KSampler.cfg": 4.5})
    assert (new["KSampler.seed"], new["6.text"], new["KSampler.cfg"]) == (1, "a fox", 4.5)
    assert txt2img["KSampler.seed"] == 156680208700286 and txt2img["KSampler.cfg"] == 8.0
    with pytest.raises(AddressError, match="KSampler.sed"):
        txt2img.with_values({"KSampler.seed": 2, "KSampler.sed": 3})
    assert txt2img["KSampler.seed"] == 156680208700286
    with pytest.raises(WorkflowError, match="is linked"):
        txt2img.with_values({"KSampler.model": "m"})
    assert txt2img.with_values({"KSampler.model": "m"}, unlink=True)["KSampler.model"] == "m"
    assert txt2img.with_values({}) == txt2img


def test_resolution_is_shared_by_copies_and_stays_correct(txt2img):
    clones = [txt2img.with_values({"KSampler.seed": i}) for i in range(3)]
    assert [c["KSampler.seed"] for c in clones] == [0, 1, 2]
    assert all(c.resolve("KSampler.seed") == ("3", "seed") for c in clones)


# -- parameters ------------------------------------------------------------------------------


def test_parameters_lists_every_literal_input_with_a_working_address(txt2img):
    df = txt2img.parameters()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["address", "node_id", "class_type", "title", "input", "value"]
    assert len(df) == 13  # 6 KSampler + 1 + 3 + 1 + 1 + 1 literals; links are left out
    assert (
        not df["input"]
        .isin(["model", "positive", "negative", "latent_image", "clip", "samples", "vae", "images"])
        .any()
    )
    by_address = df.set_index("address")
    assert by_address.loc["KSampler.seed", "value"] == 156680208700286
    assert by_address.loc["Load Checkpoint.ckpt_name", "class_type"] == "CheckpointLoaderSimple"  # shorter than class
    assert by_address.loc["EmptyLatentImage.width", "title"] == "Empty Latent Image"  # shorter than title
    assert by_address.loc["6.text", "title"] == "CLIP Text Encode (Prompt)"  # ambiguous names fall back to ids
    assert by_address.loc["7.text", "value"] == "text, watermark"
    for row in df.itertuples():
        assert txt2img.resolve(row.address) == (row.node_id, row.input)
        assert txt2img[row.address] == row.value


def test_parameters_unwraps_values_and_handles_untitled_and_empty_graphs():
    wf = Workflow.load(shared("ksampler_random.json"))
    df = wf.parameters()
    assert df["title"].isna().all()
    assert "KSampler.seed" in set(df["address"]) and "6.text" in set(df["address"])
    wf["KSampler.seed"] = [1, 2]
    assert wf.parameters().set_index("address").loc["KSampler.seed", "value"] == [1, 2]
    links_only = Workflow(graph(**{"1": ("A", {}), "2": ("B", {"x": ["1", 0]})}))
    empty = links_only.parameters()
    assert empty.empty and list(empty.columns) == ["address", "node_id", "class_type", "title", "input", "value"]


def test_parameters_address_survives_dotted_names():
    wf = Workflow(graph(**{"1": ("Y", {"a.b": 1}, "T"), "2": ("Y", {"b": 2}, "T.a")}))
    df = wf.parameters().set_index("node_id")
    assert df.loc["1", "address"] == "1.a.b"  # "T.a.b" names node 2's input b; class Y is ambiguous
    assert df.loc["2", "address"] == "T.a.b"
    assert wf.resolve("T.a.b") == ("2", "b")
    clash = Workflow(graph(**{"1": ("Z", {"a.b": 1}, "T"), "2": ("Z", {"b": 2}, "T.a"), "3": ("Z", {"b": 3}, "T.a")}))
    assert clash.parameters().set_index("node_id").loc["1", "address"] == "1.a.b"  # "T.a" is ambiguous
