"""UI-format -> API-format conversion: exactly the prompts ComfyUI's frontend made, and clear refusals."""

import copy
import importlib
import json
import random
from pathlib import Path

import pytest
from ui_helpers import with_inputs

from comfynb.errors import WorkflowError
from comfynb.sim.served import served_nodes
from comfynb.sim.validation import validate_prompt
from comfynb.uiformat import ui_to_api, widget_names

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OBJECT_INFO = json.loads((FIXTURES / "object_info_0.8.0.json").read_text())
_SHARED = [Path(__file__).resolve().parents[2] / "shared" / "ui-workflows", Path("/work/shared/ui-workflows")]
SHARED = next((p for p in _SHARED if (p / "ui").is_dir()), None)
REFERENCES = sorted(p.stem for p in (SHARED / "ui").glob("*.json")) if SHARED else []
TEMPLATE_PACKAGES = [
    "comfyui_workflow_templates_media_image",
    "comfyui_workflow_templates_media_video",
    "comfyui_workflow_templates_media_other",
]


def canonical(prompt: dict) -> str:
    return json.dumps(prompt, sort_keys=True)


@pytest.mark.skipif(not REFERENCES, reason="shared/ui-workflows not found beside the repository")
@pytest.mark.parametrize("name", REFERENCES)
def test_reference_workflows_convert_exactly_as_the_frontend_does(name):
    ui = json.loads((SHARED / "ui" / f"{name}.json").read_text())
    ref = json.loads((SHARED / "ref" / f"{name}.api.json").read_text())
    assert canonical(ui_to_api(ui, OBJECT_INFO)) == canonical(ref)


GROUP_NODE_REFERENCES = sorted(p.name.removesuffix(".api.json") for p in (FIXTURES / "groupnodes").glob("*.api.json"))


@pytest.mark.parametrize("name", GROUP_NODE_REFERENCES)
def test_group_node_workflows_convert_exactly_as_the_frontend_does(name):
    """Legacy group nodes (with linked primitives and reroutes inside, primitives outside feeding their
    widgets, bypassed, muted, widgets converted to inputs): the prompts frontend 1.35.9 made of them
    (tests/fixtures/groupnodes/README.md says how)."""
    ui = json.loads((FIXTURES / "groupnodes" / f"{name}.json").read_text())
    ref = json.loads((FIXTURES / "groupnodes" / f"{name}.api.json").read_text())
    assert canonical(ui_to_api(ui, OBJECT_INFO)) == canonical(ref)


def test_group_node_references_show_what_the_frontend_does_with_primitives_and_reroutes():
    """The facts the group-node references pin down, stated where a reader looks for them."""

    def ref(name):
        return json.loads((FIXTURES / "groupnodes" / f"{name}.api.json").read_text())

    assert len(GROUP_NODE_REFERENCES) == 21
    # a linked PrimitiveNode inside the group: its value (the group node's widget) goes to every input it feeds
    inside = ref("primitive_inside")
    assert (
        inside["10:3"]["inputs"]["seed"] == 1234
        and inside["10:2"]["inputs"]["width"] == 640 == inside["10:2"]["inputs"]["height"]
    )
    assert ref("primitive_combo_text")["10:3"]["inputs"]["sampler_name"] == "dpmpp_2m"
    # a PrimitiveNode outside feeding a group widget: its value lands on the inner node in a file saved by
    # a frontend before 1.16; in one saved by 1.35 (every group widget is also an input slot) the frontend
    # drops the input, and the server then asks for it
    assert {k: ref("primitive_outside.legacy")["8:1"]["inputs"][k] for k in ("seed", "steps")} == {
        "seed": 98765,
        "steps": 7,
    }
    assert not {"seed", "steps"} & set(ref("primitive_outside")["8:1"]["inputs"])
    # a Reroute inside is followed to a group output, but an inner input fed through one is dropped
    reroute = ref("reroute_inside")
    assert reroute["7"]["inputs"]["images"] == ["11:3", 0] and reroute["11:3"]["inputs"] == {}
    # bypassed: consumers get the checkpoint's outputs (the inner nodes are still sent); muted: the frontend
    # does not pass the mode on, so the group runs
    bypassed, muted = ref("bypassed"), ref("muted")
    assert bypassed["5"]["inputs"]["model"] == ["1", 0] and "10:1" in bypassed
    assert muted["5"]["inputs"]["model"] == ["10:1", 0]


def test_reference_set_covers_the_hard_cases():
    manifest = json.loads((SHARED / "manifest.json").read_text()) if SHARED else []
    if not manifest:
        pytest.skip("shared/ui-workflows not found")
    for feature in ("uses_subgraphs", "bypassed_nodes", "primitive_nodes", "reroute_nodes", "note_nodes"):
        assert any(entry[feature] for entry in manifest), feature


def test_template_corpus_converts_or_fails_clearly(capsys):
    """Every UI workflow in the template packages converts, or is refused naming what the server lacks."""
    files = []
    for name in TEMPLATE_PACKAGES:
        module = importlib.import_module(name)  # the dev extra installs them
        files += sorted((Path(module.__file__).parent / "templates").glob("*.json"))
    converted, failures, unconnected = 0, [], []
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(data, dict) and isinstance(data.get("nodes"), list)):
            continue  # index files, not workflows
        try:
            prompt = ui_to_api(data, OBJECT_INFO)
        except WorkflowError as exc:
            assert "does not have" in str(exc), str(exc)
            failures.append((path.stem, str(exc)))
            continue
        converted += 1
        used = {c: OBJECT_INFO[c] for c in {n["class_type"] for n in prompt.values()}}
        _, _, _, node_errors = validate_prompt(copy.deepcopy(prompt), served_nodes(with_inputs(used, prompt), {}))
        for nid, entry in node_errors.items():
            for error in entry["errors"]:
                # the only problem a real server would find: an input the template itself leaves unconnected
                assert error["type"] == "required_input_missing", (path.stem, nid, error)
                unconnected.append(f"{path.stem}: node {nid} ({entry['class_type']}) input {error['details']}")
        for nid, node in prompt.items():
            assert node["class_type"] in OBJECT_INFO, (path.stem, nid)
            for value in node["inputs"].values():
                if isinstance(value, list):
                    assert value[0] in prompt and isinstance(value[1], int), (path.stem, nid, value)
    total = converted + len(failures)
    with capsys.disabled():
        print(f"\ntemplate corpus: {converted}/{total} converted ({converted / total:.0%}) against ComfyUI 0.8.0")
        print("  converted, and validated against ComfyUI 0.8.0's node definitions (models and inputs assumed present)")
        for line in unconnected:
            print(f"  {line}: left unconnected in the template, so the server refuses it as ComfyUI's frontend would")
        print("  refused:")
        for stem, message in failures:
            print(f"  {stem}: {message.splitlines()[0]} {' '.join(m.strip() for m in message.splitlines()[1:-1])}")
    assert total > 100 and converted >= 98


def test_widget_order_skips_control_and_upload_values():
    assert widget_names(OBJECT_INFO["KSampler"])[:3] == [
        ("seed", True),
        ("control_after_generate", False),
        ("steps", True),
    ]
    assert widget_names(OBJECT_INFO["LoadImage"]) == [("image", True), ("upload", False)]


def node(nid, kind, inputs=(), outputs=(), values=None, mode=0, **extra):
    return {
        "id": nid,
        "type": kind,
        "mode": mode,
        "inputs": list(inputs),
        "outputs": list(outputs),
        "widgets_values": values if values is not None else [],
        **extra,
    }


def small_ui(mode=0):
    """checkpoint -> LoRA (mode) -> KSampler, plus a note and a primitive feeding steps."""
    return {
        "nodes": [
            node(
                1,
                "CheckpointLoaderSimple",
                outputs=[{"name": "MODEL", "type": "MODEL", "links": [1]}],
                values=["a.safetensors"],
            ),
            node(
                2,
                "LoraLoaderModelOnly",
                inputs=[{"name": "model", "type": "MODEL", "link": 1}],
                outputs=[{"name": "MODEL", "type": "MODEL", "links": [2]}],
                values=["l.safetensors", 0.8],
                mode=mode,
            ),
            node(
                3,
                "KSampler",
                inputs=[
                    {"name": "model", "type": "MODEL", "link": 2},
                    {"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 3},
                ],
                values=[5, "randomize", 20, 7.5, "euler", "normal", 1.0],
                title="Sampler",
            ),
            node(4, "Note", values=["hello"]),
            node(5, "PrimitiveNode", outputs=[{"name": "INT", "type": "INT", "links": [3]}], values=[33, "fixed"]),
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 5, 0, 3, 1, "INT"]],
    }


def test_small_workflow_bypass_mute_primitive_note():
    plain = ui_to_api(small_ui(), OBJECT_INFO)
    assert set(plain) == {"1", "2", "3"}
    assert plain["3"]["inputs"]["model"] == ["2", 0]
    assert plain["3"]["inputs"]["steps"] == 33 and plain["3"]["inputs"]["seed"] == 5
    assert "control_after_generate" not in plain["3"]["inputs"]
    assert plain["3"]["_meta"]["title"] == "Sampler" and plain["1"]["_meta"]["title"] == "Load Checkpoint"
    bypassed = ui_to_api(small_ui(mode=4), OBJECT_INFO)
    assert set(bypassed) == {"1", "3"} and bypassed["3"]["inputs"]["model"] == ["1", 0]
    muted = ui_to_api(small_ui(mode=2), OBJECT_INFO)
    assert set(muted) == {"1", "3"} and "model" not in muted["3"]["inputs"]


def test_unknown_node_types_are_listed_with_close_matches():
    ui = small_ui()
    ui["nodes"][2]["type"] = "KSamplr"
    ui["nodes"].append(node(9, "MyCustomThing"))
    with pytest.raises(WorkflowError) as err:
        ui_to_api(ui, OBJECT_INFO)
    text = str(err.value)
    assert "2 node type(s)" in text and "KSamplr (node 3)" in text and "did you mean KSampler" in text
    assert "MyCustomThing (node 9)" in text


def test_list_widget_values_are_wrapped():
    info = {
        "ListNode": {
            "input": {"required": {"xs": ["STRING", {}]}},
            "output": [],
            "output_node": True,
            "name": "ListNode",
            "display_name": "List",
        }
    }
    prompt = ui_to_api({"nodes": [node(1, "ListNode", values=[[1, 2]])], "links": []}, info)
    assert prompt["1"]["inputs"]["xs"] == {"__value__": [1, 2]}


def test_ambiguous_links_and_undefined_group_nodes_are_refused_clearly():
    ui = small_ui()
    ui["links"].append([2, 1, 0, 3, 0, "MODEL"])  # link 2 again, from another node
    with pytest.raises(WorkflowError, match="link 2 in the workflow is ambiguous: it is listed twice"):
        ui_to_api(ui, OBJECT_INFO)
    ui = small_ui()
    ui["links"].append([2, 2, 0, 3, 0, "MODEL"])  # an exact duplicate is harmless
    assert ui_to_api(ui, OBJECT_INFO)["3"]["inputs"]["model"] == ["2", 0]
    ui["nodes"].append(node(7, "workflow>My group"))
    ui["extra"] = {"groupNodes": {"Other group": {"nodes": [], "links": []}}}
    with pytest.raises(WorkflowError, match="node 7 is a group node .*has no definition 'My group'.*'Other group'"):
        ui_to_api(ui, OBJECT_INFO)


def test_dict_widget_values_map_by_name_and_missing_values_take_defaults():
    ui = {"nodes": [node(1, "EmptyLatentImage", values={"height": 768, "width": 640})], "links": []}
    assert ui_to_api(ui, OBJECT_INFO)["1"]["inputs"] == {"width": 640, "height": 768, "batch_size": 1}
    ui = {"nodes": [node(1, "EmptyLatentImage", values=[320])], "links": []}
    assert ui_to_api(ui, OBJECT_INFO)["1"]["inputs"] == {"width": 320, "height": 512, "batch_size": 1}


def test_modes_set_on_a_converted_workflow_show_in_its_ui_workflow():
    from comfynb import Workflow

    wf = Workflow.load(small_ui(), object_info=OBJECT_INFO)
    assert wf.ui_workflow() is wf.ui
    wf["LoraLoaderModelOnly@bypass"] = True
    assert wf["LoraLoaderModelOnly@bypass"] is True and "2" not in wf.to_api()
    assert wf.to_api()["3"]["inputs"]["model"] == ["1", 0]
    shown = {n["id"]: n["mode"] for n in wf.ui_workflow()["nodes"]}
    assert shown[2] == 4 and shown[1] == 0 and wf.ui["nodes"][1]["mode"] == 0  # the original is untouched
    wf["LoraLoaderModelOnly@bypass"] = False
    wf["1@mute"] = True
    assert {n["id"]: n["mode"] for n in wf.ui_workflow()["nodes"]}[1] == 2
    with pytest.raises(WorkflowError, match="takes True or False"):
        wf["1@mute"] = "yes"


def test_dynamic_combo_widgets_follow_the_chosen_option():
    ui = {
        "nodes": [
            node(1, "LoadImage", outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [1]}], values=["a.png", "image"]),
            node(
                2,
                "ResizeImageMaskNode",
                inputs=[{"name": "input", "type": "IMAGE,MASK", "link": 1}],
                values=["scale dimensions", 1280, 720, "center", "lanczos"],
            ),
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    }
    assert ui_to_api(ui, OBJECT_INFO)["2"]["inputs"] == {
        "resize_type": "scale dimensions",
        "resize_type.width": 1280,
        "resize_type.height": 720,
        "resize_type.crop": "center",
        "scale_method": "lanczos",
        "input": ["1", 0],
    }
    ui["nodes"][1]["widgets_values"] = ["scale by multiplier", 2.0, "area"]
    assert ui_to_api(ui, OBJECT_INFO)["2"]["inputs"] == {
        "resize_type": "scale by multiplier",
        "resize_type.multiplier": 2.0,
        "scale_method": "area",
        "input": ["1", 0],
    }


@pytest.mark.skipif(not REFERENCES, reason="shared/ui-workflows not found beside the repository")
def damage(rng: random.Random, root: dict | list, depth: int, junk: list) -> None:
    """Replace (or, in an object, remove) one value found by a random walk of up to ``depth`` steps."""
    parent, key, current = None, None, root
    for _ in range(rng.randint(1, depth)):
        if not isinstance(current, (dict, list)) or not current:
            break
        parent = current
        key = rng.choice(list(current)) if isinstance(current, dict) else rng.randrange(len(current))
        current = current[key]
    if parent is None:
        return
    if isinstance(parent, dict) and rng.random() < 0.2:
        del parent[key]
    else:
        parent[key] = rng.choice(junk)


def test_damaged_files_get_a_workflow_error_never_a_crash():
    """Random damage to real workflows (values replaced or removed): converted, or a WorkflowError."""
    rng = random.Random(20260)
    originals = [json.loads((SHARED / "ui" / f"{name}.json").read_text()) for name in REFERENCES]
    junk = [None, 1, -10, 3.5, True, "x", [], {}, [1], {"a": 1}]
    refused = 0
    for _ in range(600):
        ui = copy.deepcopy(rng.choice(originals))
        for _ in range(rng.randint(1, 3)):
            damage(rng, ui, 6, junk)
        try:
            ui_to_api(ui, OBJECT_INFO)
        except WorkflowError as exc:
            refused += 1
            assert str(exc)
    assert refused > 50  # the damage did reach the checks


# -- legacy group nodes ---------------------------------------------------------------------------


def group_ui(group_mode=0, inner_negative_mode=0):
    """A txt2img workflow whose prompts and sampler were made into the legacy group node
    "Sampler group" (node 10), stored as the frontend stores it: ``extra.groupNodes[name]`` holds the
    clipboard form of the inner nodes (indexes 0, 1, 2), links ``[from index, from slot, to index,
    to slot, from node id, type]`` (from index null: the link came from outside the group) and the
    ``external`` outputs."""
    definition = {
        "nodes": [
            node(  # index 0
                None,
                "CLIPTextEncode",
                inputs=[{"name": "clip", "type": "CLIP", "link": None}],
                outputs=[{"name": "CONDITIONING", "type": "CONDITIONING", "links": []}],
                values=["a cat"],  # overridden by the group node's widget "text"
                title="Positive",
            ),
            node(  # index 1
                None,
                "CLIPTextEncode",
                inputs=[{"name": "clip", "type": "CLIP", "link": None}],
                outputs=[{"name": "CONDITIONING", "type": "CONDITIONING", "links": []}],
                values=["ugly"],  # overridden by the group node's widget "Negative text"
                title="Negative",
                mode=inner_negative_mode,
            ),
            node(  # index 2
                None,
                "KSampler",
                inputs=[
                    {"name": "model", "type": "MODEL", "link": None},
                    {"name": "positive", "type": "CONDITIONING", "link": None},
                    {"name": "negative", "type": "CONDITIONING", "link": None},
                    {"name": "latent_image", "type": "LATENT", "link": None},
                ],
                outputs=[{"name": "LATENT", "type": "LATENT", "links": []}],
                values=[1, "fixed", 20, 8.0, "euler", "normal", 1.0],
            ),
        ],
        "links": [
            [0, 0, 2, 1, 11, "CONDITIONING"],
            [1, 0, 2, 2, 12, "CONDITIONING"],
            [None, 1, 0, 0, 4, "CLIP"],
            [None, 1, 1, 0, 4, "CLIP"],
            [None, 0, 2, 0, 4, "MODEL"],
            [None, 0, 2, 3, 5, "LATENT"],
        ],
        "external": [[2, 0, "LATENT"]],
    }
    # The group's definition (GroupNodeConfig), inner node by inner node, widgets before input slots:
    #   0 Positive: widget "text"; slot "clip" (group input 0)
    #   1 Negative: "text" and "clip" are taken, so "Negative text" and "Negative clip" (group input 1)
    #   2 KSampler: widgets seed (+ its control value), steps, cfg, sampler_name, scheduler, denoise;
    #     slots model (group input 2), latent_image (group input 3); positive and negative are linked
    #     inside the group, so they are no group inputs
    #   outputs: only KSampler's LATENT (the CONDITIONINGs are linked inside and not external)
    return {
        "nodes": [
            node(
                4,
                "CheckpointLoaderSimple",
                outputs=[
                    {"name": "MODEL", "type": "MODEL", "links": [23]},
                    {"name": "CLIP", "type": "CLIP", "links": [21, 22]},
                    {"name": "VAE", "type": "VAE", "links": [26]},
                ],
                values=["sd15.safetensors"],
            ),
            node(
                5,
                "EmptyLatentImage",
                outputs=[{"name": "LATENT", "type": "LATENT", "links": [24]}],
                values=[512, 512, 1],
            ),
            node(
                10,
                "workflow>Sampler group",
                inputs=[
                    {"name": "clip", "type": "CLIP", "link": 21},
                    {"name": "Negative clip", "type": "CLIP", "link": 22},
                    {"name": "model", "type": "MODEL", "link": 23},
                    {"name": "latent_image", "type": "LATENT", "link": 24},
                ],
                outputs=[{"name": "LATENT", "type": "LATENT", "links": [25]}],
                values=["a red fox in snow", "blurry, lowres", 42, "fixed", 30, 6.5, "dpmpp_2m", "karras", 0.9],
                mode=group_mode,
            ),
            node(
                8,
                "VAEDecode",
                inputs=[{"name": "samples", "type": "LATENT", "link": 25}, {"name": "vae", "type": "VAE", "link": 26}],
                outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [27]}],
            ),
            node(9, "SaveImage", inputs=[{"name": "images", "type": "IMAGE", "link": 27}], values=["fox"]),
        ],
        "links": [
            [21, 4, 1, 10, 0, "CLIP"],
            [22, 4, 1, 10, 1, "CLIP"],
            [23, 4, 0, 10, 2, "MODEL"],
            [24, 5, 0, 10, 3, "LATENT"],
            [25, 10, 0, 8, 0, "LATENT"],
            [26, 4, 2, 8, 1, "VAE"],
            [27, 8, 0, 9, 0, "IMAGE"],
        ],
        "extra": {"groupNodes": {"Sampler group": definition}},
    }


def expected_group_prompt():
    """Written by hand from the frontend's rules (GroupNodeHandler, ExecutableGroupNodeDTO and
    ExecutableGroupNodeChildDTO); the group node itself is virtual and not sent."""
    return {
        "4": {
            "inputs": {"ckpt_name": "sd15.safetensors"},
            "class_type": "CheckpointLoaderSimple",
            "_meta": {"title": "Load Checkpoint"},
        },
        "5": {
            "inputs": {"width": 512, "height": 512, "batch_size": 1},
            "class_type": "EmptyLatentImage",
            "_meta": {"title": "Empty Latent Image"},
        },
        # "10:0": inner node 0 of group node 10; its text is the group's widget "text", its clip comes
        # through group input 0 ("clip") from node 4's CLIP output
        "10:0": {
            "inputs": {"text": "a red fox in snow", "clip": ["4", 1]},
            "class_type": "CLIPTextEncode",
            "_meta": {"title": "Positive"},
        },
        # "10:1": inner node 1; the group's widget "Negative text", group input 1 ("Negative clip")
        "10:1": {
            "inputs": {"text": "blurry, lowres", "clip": ["4", 1]},
            "class_type": "CLIPTextEncode",
            "_meta": {"title": "Negative"},
        },
        # "10:2": inner node 2; widgets from the group's seed..denoise (the "fixed" control value is
        # not an input), model and latent_image through group inputs 2 and 3, positive and negative
        # from the inner links (inner nodes 0 and 1)
        "10:2": {
            "inputs": {
                "seed": 42,
                "steps": 30,
                "cfg": 6.5,
                "sampler_name": "dpmpp_2m",
                "scheduler": "karras",
                "denoise": 0.9,
                "model": ["4", 0],
                "positive": ["10:0", 0],
                "negative": ["10:1", 0],
                "latent_image": ["5", 0],
            },
            "class_type": "KSampler",
            "_meta": {"title": "KSampler"},
        },
        # group output 0 is inner node 2's output 0 (updateLink), so the decoder reads "10:2"
        "8": {
            "inputs": {"samples": ["10:2", 0], "vae": ["4", 2]},
            "class_type": "VAEDecode",
            "_meta": {"title": "VAE Decode"},
        },
        "9": {
            "inputs": {"filename_prefix": "fox", "images": ["8", 0]},
            "class_type": "SaveImage",
            "_meta": {"title": "Save Image"},
        },
    }


def test_group_node_is_flattened_with_the_frontends_ids_widgets_and_links():
    prompt = ui_to_api(group_ui(), OBJECT_INFO)
    assert canonical(prompt) == canonical(expected_group_prompt())
    # the old separator "workflow/" names the same definition
    ui = group_ui()
    ui["nodes"][2]["type"] = "workflow/Sampler group"
    assert canonical(ui_to_api(ui, OBJECT_INFO)) == canonical(expected_group_prompt())
    # and what the server would check passes
    used = {c: OBJECT_INFO[c] for c in {n["class_type"] for n in prompt.values()}}
    _, _, _, node_errors = validate_prompt(copy.deepcopy(prompt), served_nodes(with_inputs(used, prompt), {}))
    assert node_errors == {}


def test_group_node_bypassed_or_muted_and_inner_modes():
    expected = expected_group_prompt()
    # Bypassed group node (ExecutableGroupNodeDTO.resolveOutput): the decoder's LATENT input is
    # wired to the group's first input of type LATENT (group input 3, from node 5); the inner
    # nodes keep their own modes and are still sent.
    bypassed = ui_to_api(group_ui(group_mode=4), OBJECT_INFO)
    assert bypassed["8"]["inputs"]["samples"] == ["5", 0]
    assert set(bypassed) == set(expected) and bypassed["10:2"] == expected["10:2"]
    # Muted group node: the group node is virtual (never sent itself) and the frontend does not pass
    # its mode to the inner nodes, so the prompt is the one of the active group.
    assert canonical(ui_to_api(group_ui(group_mode=2), OBJECT_INFO)) == canonical(expected)
    # An inner node muted in the definition is dropped, and the link to it with it.
    muted_inner = ui_to_api(group_ui(inner_negative_mode=2), OBJECT_INFO)
    assert "10:1" not in muted_inner and "negative" not in muted_inner["10:2"]["inputs"]
    assert muted_inner["10:2"]["inputs"]["positive"] == ["10:0", 0]


def test_damaged_or_unusable_group_definitions_are_refused_clearly():
    ui = group_ui()
    ui["extra"]["groupNodes"]["Sampler group"]["links"][0] = [0, 0, 7, 1, 11, "CONDITIONING"]  # no inner node 7
    with pytest.raises(WorkflowError, match=r"damaged: a link in the definition of group node workflow>Sampler group"):
        ui_to_api(ui, OBJECT_INFO)
    ui = group_ui()
    ui["extra"]["groupNodes"]["Sampler group"]["nodes"] = "x"
    with pytest.raises(WorkflowError, match=r"'nodes' in the definition of group node workflow>Sampler group"):
        ui_to_api(ui, OBJECT_INFO)
    ui = group_ui()
    ui["extra"]["groupNodes"]["Sampler group"]["nodes"][2]["type"] = "KSamplerXL"
    with pytest.raises(WorkflowError, match=r"KSamplerXL \(node 10:2 in group node 'workflow>Sampler group'\)"):
        ui_to_api(ui, OBJECT_INFO)
    ui = group_ui()
    ui["nodes"][2]["outputs"].append({"name": "X", "type": "LATENT", "links": [28]})
    ui["nodes"][3]["inputs"][0]["link"] = 28  # the decoder reads a second group output
    ui["links"].append([28, 10, 1, 8, 0, "LATENT"])  # the group has one output only
    with pytest.raises(
        WorkflowError, match="group node 10 .*its output 1 is linked but its definition has no such output"
    ):
        ui_to_api(ui, OBJECT_INFO)


def test_group_nodes_the_frontend_cannot_run_are_refused_clearly():
    def fixture(name):
        return json.loads((FIXTURES / "groupnodes" / f"{name}.json").read_text())

    # an inner PrimitiveNode whose link is of no widget type (the frontend fails to build the group)
    ui = fixture("primitive_inside")
    for link in ui["extra"]["groupNodes"]["primitive_inside"]["links"]:
        if link[0] == 0:  # the Seed primitive -> the sampler's seed
            link[5] = "MODEL"
    with pytest.raises(WorkflowError, match=r"inner PrimitiveNode 0 feeds input 'seed' of inner node 3 .*'MODEL'"):
        ui_to_api(ui, OBJECT_INFO)
    # a group output that comes from an inner Reroute fed from outside the group
    ui = fixture("reroute_inside")
    definition = ui["extra"]["groupNodes"]["reroute_inside"]
    definition["links"] = [link for link in definition["links"] if link[2] != 4]  # decoder -> reroute 4 unlinked
    definition["config"] = {"3": {"output": {"0": {"visible": False}}}}  # the decoder's output hidden
    with pytest.raises(
        WorkflowError, match=r"group node 11 .*its output 0 comes from an inner Reroute that is not fed"
    ):
        ui_to_api(ui, OBJECT_INFO)


def test_damaged_group_definitions_with_reroutes_never_crash_or_hang():
    ui = json.loads((FIXTURES / "groupnodes" / "reroute_inside.json").read_text())
    definition = ui["extra"]["groupNodes"]["reroute_inside"]
    # the output reroute (4) and the inner one (2) feed each other
    definition["links"] = [link for link in definition["links"] if link[2] not in (2, 4)]
    definition["links"] += [[2, 0, 4, 0, 90, "IMAGE"], [4, 0, 2, 0, 91, "IMAGE"]]
    definition["external"] = [[4, 0, "IMAGE"]]
    hidden = {"output": {"0": {"visible": False}}}
    definition["config"] = {"1": hidden, "3": hidden}  # the sampler's and decoder's outputs: reroute 4 is output 0
    with pytest.raises(WorkflowError, match="inner Reroutes feed each other in a circle"):
        ui_to_api(ui, OBJECT_INFO)
    # a reroute whose link carries a list type (old files stored combo types so) is keyed as the frontend keys it
    ui = json.loads((FIXTURES / "groupnodes" / "reroute_inside.json").read_text())
    for link in ui["extra"]["groupNodes"]["reroute_inside"]["links"]:
        if link[2] == 4:
            link[5] = ["a", "b"]
    ui_to_api(ui, OBJECT_INFO)


def test_damaged_group_node_files_get_a_workflow_error_never_a_crash():
    """Random damage inside group definitions and group node instances of the group-node references."""
    rng = random.Random(20261)
    originals = [json.loads((FIXTURES / "groupnodes" / f"{n}.json").read_text()) for n in GROUP_NODE_REFERENCES]
    junk = [None, 1, -1, 7, 3.5, True, "x", "COMBO", [], {}, [1], [0, 0], {"a": 1}, {"name": "seed"}]
    refused = 0
    for _ in range(1500):
        ui = copy.deepcopy(rng.choice(originals))
        instances = [n for n in ui["nodes"] if n["type"].startswith("workflow")]
        targets = [*ui["extra"]["groupNodes"].values(), *instances]
        for _ in range(rng.randint(1, 3)):
            damage(rng, rng.choice(targets), 5, junk)
        try:
            ui_to_api(ui, OBJECT_INFO)
        except WorkflowError as exc:
            refused += 1
            assert str(exc)
    assert refused > 100  # the damage did reach the checks


def test_group_node_damage_found_by_fuzzing_is_refused_clearly():
    def fixture(name):
        return json.loads((FIXTURES / "groupnodes" / f"{name}.json").read_text())

    ui = fixture("primitive_outside")  # an instance input's widget that is no object
    next(n for n in ui["nodes"] if n["id"] == 8)["inputs"][7]["widget"] = 5
    with pytest.raises(WorkflowError, match=r"an input's 'widget' of node 8 in the workflow must be an object"):
        ui_to_api(ui, OBJECT_INFO)
    ui = fixture("plain")  # a widget name that is no string, inside a definition
    ui["extra"]["groupNodes"]["plain"]["nodes"][1]["inputs"][4]["widget"] = {"name": ["seed"]}
    with pytest.raises(WorkflowError, match=r"an input's 'widget' of node 1 in the definition of group node"):
        ui_to_api(ui, OBJECT_INFO)
    ui = fixture("primitive_inside")  # the type of an inner primitive's link
    for link in ui["extra"]["groupNodes"]["primitive_inside"]["links"]:
        if link[0] == 0:
            link[5] = {"a": 1}
    with pytest.raises(WorkflowError, match=r"the type of the link from group node workflow>primitive_inside"):
        ui_to_api(ui, OBJECT_INFO)
