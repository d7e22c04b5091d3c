"""Contract tests of the ComfyUI nodes and the shipped UI workflows, without ComfyUI.

Nodes: every class declares a well-formed classic-API interface (INPUT_TYPES with a
tooltip on every input and sane defaults, RETURN_TYPES / RETURN_NAMES / OUTPUT_TOOLTIPS of
one length, FUNCTION accepting exactly the declared inputs, CATEGORY, DESCRIPTION), and our
link types never reuse a core type name.

Workflows (workflows/*.json, the UI format the front end saves): every node type exists
(ours, or a core node whose interface is copied below from ComfyUI's nodes.py /
comfy_extras/nodes_mask.py, 0.3.6x), links[] agrees with the nodes' inputs/outputs and
producer/consumer types match, widgets_values have the count the front end writes (hidden
control_after_generate after seeds, the upload button's value after file widgets) and
values inside the inputs' ranges/options, every required socket is connected, the files
they load are example inputs the package installs, and the graph reads left to right.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from interact_custom.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, comfy_bridge
from interact_custom.pipelines.mgig import pipeline as choi

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
EXAMPLE = json.loads((REPO / "pipelines" / "assets" / "examples" / "example.json").read_text())

# Data types ComfyUI defines and our nodes exchange with core nodes.
SHARED_TYPES = {"IMAGE", "MASK", "STRING", "INT", "FLOAT", "BOOLEAN"}
# Core type names a custom type must never take (a link would then accept core values).
CORE_TYPE_NAMES = {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "CLIP_VISION", "CLIP_VISION_OUTPUT",
                   "CONTROL_NET", "STYLE_MODEL", "GLIGEN", "UPSCALE_MODEL", "SIGMAS", "SAMPLER", "NOISE",
                   "GUIDER", "AUDIO", "VIDEO", "IMAGE", "MASK", "LORA_MODEL", "PHOTOMAKER", "HOOKS", "WEBCAM"}
OWN_TYPES = {"IAMG_MODEL", "MGIG_MODEL", "CHOI_BOX", "CHOI_ID"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
MAX_RES = 16384
# A file chooser widget (LoadImage-like): its value is a file of ComfyUI's input folder.
INPUT_FILE = ("INPUT_FILE", {"image_upload": True})

# Interfaces of the core nodes the workflows use or a user wires to ours (ComfyUI 0.3.6x).
CORE_NODES = {
    "LoadImage": ({"required": {"image": INPUT_FILE}}, ("IMAGE", "MASK")),
    "LoadImageMask": ({"required": {"image": INPUT_FILE, "channel": (["alpha", "red", "green", "blue"], {})}},
                      ("MASK",)),
    "InvertMask": ({"required": {"mask": ("MASK", {})}}, ("MASK",)),
    "GrowMask": ({"required": {"mask": ("MASK", {}),
                               "expand": ("INT", {"default": 0, "min": -MAX_RES, "max": MAX_RES, "step": 1}),
                               "tapered_corners": ("BOOLEAN", {"default": True})}}, ("MASK",)),
    "ThresholdMask": ({"required": {"mask": ("MASK", {}),
                                    "value": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0})}}, ("MASK",)),
    "FeatherMask": ({"required": {"mask": ("MASK", {}), **{k: ("INT", {"default": 0, "min": 0, "max": MAX_RES})
                                                           for k in ("left", "top", "right", "bottom")}}},
                    ("MASK",)),
    "SolidMask": ({"required": {"value": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}),
                                "width": ("INT", {"default": 512, "min": 1, "max": MAX_RES}),
                                "height": ("INT", {"default": 512, "min": 1, "max": MAX_RES})}}, ("MASK",)),
    "MaskToImage": ({"required": {"mask": ("MASK", {})}}, ("IMAGE",)),
    "ImageToMask": ({"required": {"image": ("IMAGE", {}), "channel": (["red", "green", "blue", "alpha"], {})}},
                    ("MASK",)),
    "SaveImage": ({"required": {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})}},
                  ()),
    "PreviewImage": ({"required": {"images": ("IMAGE", {})}}, ()),
}
# Front-end-only nodes: one text widget, no sockets, never sent to the server.
NOTE_NODES = {"Note", "MarkdownNote"}


def node_interface(type_: str) -> tuple[dict, tuple]:
    """(INPUT_TYPES, RETURN_TYPES) of a node type used in a workflow."""
    if type_ in NODE_CLASS_MAPPINGS:
        cls = NODE_CLASS_MAPPINGS[type_]
        return cls.INPUT_TYPES(), tuple(cls.RETURN_TYPES)
    if type_ in CORE_NODES:
        return CORE_NODES[type_]
    raise AssertionError(f"unknown node type {type_!r}: neither ours nor a core node this test knows")


def declared_inputs(input_types: dict) -> list[tuple[str, str, tuple]]:
    """(section, name, spec) in declaration order: required, then optional."""
    return [(s, name, spec) for s in ("required", "optional") for name, spec in input_types.get(s, {}).items()]


def spec_type(spec) -> str:
    return "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0]


def spec_opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    return (spec_type(spec) in WIDGET_TYPES | {"COMBO"} or spec is INPUT_FILE) and not spec_opts(spec).get("forceInput")


def widget_layout(input_types: dict) -> list[tuple[str, str, tuple | None]]:
    """What the front end writes into widgets_values, in order: (kind, input name, spec) with
    kind "value", "control" (the hidden control_after_generate after a seed-like INT) or
    "upload" (the upload button's value, after a section's widgets)."""
    layout = []
    for section in ("required", "optional"):
        uploads = []
        for name, spec in input_types.get(section, {}).items():
            if not is_widget(spec):
                continue
            layout.append(("value", name, spec))
            opts = spec_opts(spec)
            if opts.get("control_after_generate") or (spec_type(spec) == "INT" and name in ("seed", "noise_seed")):
                layout.append(("control", name, None))
            if opts.get("image_upload"):
                uploads.append(("upload", name, None))
        layout += uploads
    return layout


def check_value(where: str, value, spec) -> None:
    """A widget value the front end keeps and the server accepts for this input spec."""
    t, opts = spec_type(spec), spec_opts(spec)
    if spec is INPUT_FILE:
        assert isinstance(value, str) and value.startswith(comfy_bridge.EXAMPLE_INPUT_PREFIX), \
            f"{where}: loads {value!r}, not one of the example inputs the package installs"
        source = value[len(comfy_bridge.EXAMPLE_INPUT_PREFIX):]
        assert (comfy_bridge.EXAMPLES_DIR / source).is_file(), f"{where}: pipelines/assets/examples/{source} does not exist"
        return
    if t == "COMBO":
        assert value in list(spec[0]), f"{where}: {value!r} is not one of {list(spec[0])}"
    elif t == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an int"
    elif t == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a number"
    elif t == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a string"
    elif t == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a boolean"
    if t in ("INT", "FLOAT"):
        assert opts.get("min", value) <= value <= opts.get("max", value), \
            f"{where}: {value} outside [{opts.get('min')}, {opts.get('max')}]"


# ------------------------------------------------------------------------------- nodes

NODES = sorted(NODE_CLASS_MAPPINGS.items())


def test_mappings():
    assert NODE_CLASS_MAPPINGS, "the package registers no nodes"
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    for key, cls in NODE_CLASS_MAPPINGS.items():
        # Node ids are global in ComfyUI: a package prefix avoids clashes with other packs.
        assert key.startswith("InteractCustom"), key
        assert NODE_DISPLAY_NAME_MAPPINGS[key].strip(), key
    assert len(set(NODE_DISPLAY_NAME_MAPPINGS.values())) == len(NODE_DISPLAY_NAME_MAPPINGS)


@pytest.mark.parametrize("key,cls", NODES, ids=[k for k, _ in NODES])
def test_node_interface(key, cls):
    assert cls.CATEGORY == "Interact-Custom"
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 20
    types = cls.INPUT_TYPES()
    assert set(types) <= {"required", "optional", "hidden"}, set(types)
    assert types.get("required"), "no required inputs"

    for section, name, spec in declared_inputs(types):
        where = f"{key}.{name}"
        assert isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], dict), f"{where}: spec {spec!r}"
        t, opts = spec_type(spec), spec_opts(spec)
        assert isinstance(opts.get("tooltip"), str) and len(opts["tooltip"]) > 5, f"{where}: no tooltip"
        if t == "COMBO":
            assert spec[0] and all(isinstance(v, str) for v in spec[0]), where
            assert opts.get("default", spec[0][0]) in spec[0], f"{where}: default not among the options"
        elif t in ("INT", "FLOAT"):
            assert {"default", "min", "max"} <= set(opts), f"{where}: needs default/min/max"
            assert opts["min"] <= opts["default"] <= opts["max"], where
            if t == "INT":
                assert all(isinstance(opts[k], int) for k in ("default", "min", "max")), where
        elif t in ("STRING", "BOOLEAN"):
            assert "default" in opts, f"{where}: no default"
            check_value(where, opts["default"], spec)
        else:
            assert t in SHARED_TYPES | OWN_TYPES, f"{where}: unknown link type {t!r}"

    returns = cls.RETURN_TYPES
    assert isinstance(returns, tuple) and returns and all(isinstance(t, str) for t in returns)
    assert isinstance(cls.RETURN_NAMES, tuple) and len(cls.RETURN_NAMES) == len(returns)
    assert len(set(cls.RETURN_NAMES)) == len(returns)
    assert isinstance(cls.OUTPUT_TOOLTIPS, tuple) and len(cls.OUTPUT_TOOLTIPS) == len(returns)
    assert all(isinstance(t, str) and len(t) > 5 for t in cls.OUTPUT_TOOLTIPS)
    for t in returns:
        assert t in SHARED_TYPES | OWN_TYPES, f"{key}: unknown output type {t!r}"

    # FUNCTION takes exactly the declared inputs (ComfyUI passes them as keywords);
    # optional ones must have a default, since an unconnected optional input is not passed.
    fn = getattr(cls, cls.FUNCTION)
    params = {n: p for n, p in inspect.signature(fn).parameters.items() if n != "self"}
    declared = {name: section for section, name, _ in declared_inputs(types)}
    assert set(params) == set(declared), f"{key}.{cls.FUNCTION} parameters {sorted(params)} != inputs {sorted(declared)}"
    for name, section in declared.items():
        has_default = params[name].default is not inspect.Parameter.empty
        assert has_default == (section == "optional"), f"{key}.{name}: default must exist iff the input is optional"


def test_own_types_never_core_names():
    used = set()
    for cls in NODE_CLASS_MAPPINGS.values():
        used |= {spec_type(spec) for _, _, spec in declared_inputs(cls.INPUT_TYPES())} | set(cls.RETURN_TYPES)
    custom = used - SHARED_TYPES - {"COMBO"}
    assert custom == OWN_TYPES
    assert not custom & CORE_TYPE_NAMES


# ---------------------------------------------------------------------------- workflows

def test_workflows_shipped():
    assert {p.stem for p in WORKFLOWS} >= {"choi_background", "choi_basic", "choi_retrieval", "choi_manual_mask"}
    # The product card names workflows/; ComfyUI lists it (like example_workflows/, its
    # preferred name) and serves both under one URL prefix: one folder only.
    assert not (REPO / "example_workflows").exists()


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_every_workflow_has_a_thumbnail(path):
    # The template browser asks for <name>.jpg beside <name>.json (a 404 without one);
    # tests/render_thumbnails.py renders them from real runs.
    from PIL import Image

    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"{thumb.name} missing: run python tests/render_thumbnails.py"
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.height >= 128 and im.width >= im.height
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 32, f"{thumb.name} is (nearly) blank"


def load_workflow(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(params=WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def workflow(request) -> dict:
    return load_workflow(request.param)


def test_workflow_structure(workflow):
    assert workflow["version"] == 0.4
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"):
        assert key in workflow, key
    ids = [n["id"] for n in workflow["nodes"]]
    assert len(set(ids)) == len(ids) and workflow["last_node_id"] >= max(ids)
    link_ids = [link[0] for link in workflow["links"]]
    assert len(set(link_ids)) == len(link_ids) and workflow["last_link_id"] >= max(link_ids)
    orders = sorted(n["order"] for n in workflow["nodes"])
    assert orders == list(range(len(ids)))
    for n in workflow["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                    "widgets_values"):
            assert key in n, f"node {n['id']} lacks {key}"
        assert n["mode"] == 0, f"node {n['id']} is muted or bypassed"
        if n["type"] not in NOTE_NODES:
            assert n["properties"]["Node name for S&R"] == n["type"]


def test_workflow_links_and_types(workflow):
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link in workflow["links"]:
        link_id, src, src_slot, dst, dst_slot, type_ = link
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert link_id in (out["links"] or []), f"link {link_id} missing from node {src}'s output"
        assert inp["link"] == link_id, f"link {link_id} does not reach node {dst}'s input {inp['name']}"
        _, returns = node_interface(nodes[src]["type"])
        input_types, _ = node_interface(nodes[dst]["type"])
        spec = dict((name, s) for _, name, s in declared_inputs(input_types))[inp["name"]]
        assert type_ == returns[src_slot] == out["type"] == spec_type(spec) == inp["type"], \
            f"link {link_id}: {nodes[src]['type']}[{src_slot}] {returns[src_slot]} -> " \
            f"{nodes[dst]['type']}.{inp['name']} {spec_type(spec)} (saved as {type_})"
    by_id = {link[0]: link for link in workflow["links"]}
    for n in workflow["nodes"]:
        for slot, out in enumerate(n["outputs"]):
            assert out.get("slot_index", slot) == slot
            for link_id in out["links"] or []:
                assert by_id[link_id][1:3] == [n["id"], slot], f"node {n['id']} output {slot} link {link_id}"
        for slot, inp in enumerate(n["inputs"]):
            if inp.get("link") is not None:
                assert by_id[inp["link"]][3:5] == [n["id"], slot], f"node {n['id']} input {inp['name']}"


def test_workflow_nodes_match_interfaces(workflow):
    for n in workflow["nodes"]:
        where = f"node {n['id']} ({n['type']})"
        if n["type"] in NOTE_NODES:
            assert not n["inputs"] and not n["outputs"]
            assert len(n["widgets_values"]) == 1 and n["widgets_values"][0].strip()
            continue
        input_types, returns = node_interface(n["type"])
        specs = {name: spec for _, name, spec in declared_inputs(input_types)}
        assert [o["type"] for o in n["outputs"]] == list(returns), where

        # Socket and widget entries as the front end writes them; every required socket linked.
        for inp in n["inputs"]:
            if inp["name"] not in specs:  # the upload button's UI-only entry
                assert inp.get("type") == "IMAGEUPLOAD" and inp.get("link") is None, f"{where}: input {inp}"
                continue
            spec = specs[inp["name"]]
            if is_widget(spec):
                assert inp.get("widget") == {"name": inp["name"]}, f"{where}: widget entry {inp}"
            assert inp["type"] == ("COMBO" if spec is INPUT_FILE else spec_type(spec)), f"{where}: {inp}"
        names = [inp["name"] for inp in n["inputs"]]
        for section, name, spec in declared_inputs(input_types):
            if not is_widget(spec):
                assert name in names, f"{where}: no entry for socket {name}"
                if section == "required":
                    linked = next(inp for inp in n["inputs"] if inp["name"] == name)["link"]
                    assert linked is not None, f"{where}: required input {name} is not connected"

        # widgets_values: count and values, hidden control values included.
        layout = widget_layout(input_types)
        values = n["widgets_values"]
        assert len(values) == len(layout), \
            f"{where}: {len(values)} widgets_values {values}, expected {[(k, nm) for k, nm, _ in layout]}"
        for (kind, name, spec), value in zip(layout, values):
            if kind == "value":
                check_value(f"{where}.{name}", value, spec)
            elif kind == "control":
                assert value in CONTROL_VALUES, f"{where}: {value!r} where the control of {name} belongs"
            else:
                assert value == "image", f"{where}: upload value {value!r}"


def test_workflow_layout_and_notes(workflow):
    nodes = {n["id"]: n for n in workflow["nodes"]}
    # Reads left to right: no link goes back to the left.
    for _, src, _, dst, _, _ in workflow["links"]:
        assert nodes[src]["pos"][0] <= nodes[dst]["pos"][0], f"link {src} -> {dst} goes right to left"
    # Every stage is in a group whose box holds its nodes; notes may sit outside, but never
    # in two groups at once.
    assert len(workflow["groups"]) >= 4
    for n in nodes.values():
        x, y = n["pos"]
        w, h = n["size"]
        inside = [g for g in workflow["groups"]
                  if g["bounding"][0] <= x and x + w <= g["bounding"][0] + g["bounding"][2]
                  and g["bounding"][1] <= y - 30 and y + h <= g["bounding"][1] + g["bounding"][3]]
        want = (0, 1) if n["type"] in NOTE_NODES else (1,)
        assert len(inside) in want, f"node {n['id']} ({n['type']}) lies in {len(inside)} groups"
    notes = [n["widgets_values"][0] for n in nodes.values() if n["type"] in NOTE_NODES]
    assert any("20 steps" in t and "CPU" in t for t in notes), "a note must explain the CPU-sized step counts"


def _nodes_of(workflow, type_):
    return [n for n in workflow["nodes"] if n["type"] == type_]


def _source(workflow, node, input_name):
    """(source node, slot) linked to a node's input."""
    link_id = next(inp for inp in node["inputs"] if inp["name"] == input_name)["link"]
    link = next(link for link in workflow["links"] if link[0] == link_id)
    return next(n for n in workflow["nodes"] if n["id"] == link[1]), link[2]


def test_workflow_pipeline(workflow):
    """The method's chain: a sampler fed by ID features + detail map and a mask, saved once;
    reference masks are the cut-outs' alpha (LoadImage MASK through InvertMask)."""
    (sampler,) = _nodes_of(workflow, "InteractCustomMaskGuidedSampler")
    (save,) = _nodes_of(workflow, "SaveImage")
    assert _source(workflow, save, "images") == (sampler, 0)
    assert _source(workflow, sampler, "id_features")[0]["type"] == "InteractCustomIDFeatures"
    assert _source(workflow, sampler, "detail_map")[0]["type"] == "InteractCustomDetailMap"
    (ident,) = _nodes_of(workflow, "InteractCustomIDFeatures")
    for who in ("human", "object"):
        inv, _ = _source(workflow, ident, f"{who}_mask")
        assert inv["type"] == "InvertMask"
        load, slot = _source(workflow, inv, "mask")
        assert load["type"] == "LoadImage" and slot == 1
        assert _source(workflow, ident, f"{who}_image") == (load, 0)
        assert load["widgets_values"][0] == comfy_bridge.example_input_name(f"{who}.png")
    assert save["widgets_values"][0].startswith("choi_")
    # The embedded models' recommended settings (pipelines.mgig.pipeline.RECOMMENDED_*).
    assert _widget(workflow, sampler, "steps") == choi.RECOMMENDED_STEPS
    assert _widget(workflow, sampler, "sampler") == choi.RECOMMENDED_SAMPLER
    assert _widget(workflow, sampler, "guidance") == choi.RECOMMENDED_GUIDANCE
    for iamg_node in _nodes_of(workflow, "InteractCustomIAMGGenerateMask"):
        assert _widget(workflow, iamg_node, "steps") == choi.RECOMMENDED_STEPS
        assert _widget(workflow, iamg_node, "sampler") == choi.RECOMMENDED_SAMPLER


def _widget(workflow, node, name):
    layout = widget_layout(node_interface(node["type"])[0])
    return node["widgets_values"][[(k, nm) for k, nm, _ in layout].index(("value", name))]


def test_choi_background_settings():
    wf = load_workflow(REPO / "workflows" / "choi_background.json")
    (box,) = _nodes_of(wf, "InteractCustomBox")
    assert box["widgets_values"] == EXAMPLE["box"]
    (iamg,) = _nodes_of(wf, "InteractCustomIAMGGenerateMask")
    (sampler,) = _nodes_of(wf, "InteractCustomMaskGuidedSampler")
    bg, _ = _source(wf, iamg, "background")
    assert _widget(wf, bg, "image") == comfy_bridge.example_input_name("background.png")
    assert _source(wf, sampler, "background")[0] is bg
    assert _source(wf, iamg, "box")[0] is box and _source(wf, sampler, "box")[0] is box
    assert _source(wf, sampler, "interaction_mask") == (iamg, 0)
    assert _widget(wf, iamg, "interaction") == EXAMPLE["caption"]
    previewed = {_source(wf, p, "images")[0]["type"] for p in _nodes_of(wf, "PreviewImage")}
    assert previewed == {"InteractCustomIAMGGenerateMask", "InteractCustomIDFeatures", "InteractCustomDetailMap"}


def test_choi_basic_has_no_background():
    wf = load_workflow(REPO / "workflows" / "choi_basic.json")
    assert not _nodes_of(wf, "InteractCustomBox")
    (iamg,) = _nodes_of(wf, "InteractCustomIAMGGenerateMask")
    assert (_widget(wf, iamg, "width"), _widget(wf, iamg, "height")) == (512, 512)
    (sampler,) = _nodes_of(wf, "InteractCustomMaskGuidedSampler")
    assert _source(wf, sampler, "interaction_mask") == (iamg, 0)
    linked = {inp["name"] for n in (iamg, sampler) for inp in n["inputs"] if inp.get("link") is not None}
    assert not {"background", "box"} & linked


def test_choi_retrieval_chain():
    wf = load_workflow(REPO / "workflows" / "choi_retrieval.json")
    (ret,) = _nodes_of(wf, "InteractCustomIAMGRRetrieveMask")
    (fit,) = _nodes_of(wf, "InteractCustomFitMaskToBox")
    (sampler,) = _nodes_of(wf, "InteractCustomMaskGuidedSampler")
    assert _widget(wf, ret, "query") == EXAMPLE["caption"]
    assert _source(wf, fit, "mask") == (ret, 0)
    assert _source(wf, sampler, "interaction_mask") == (fit, 0)
    assert _source(wf, fit, "image")[0] is _source(wf, sampler, "background")[0]
    assert _source(wf, fit, "box")[0]["widgets_values"] == EXAMPLE["box"]
    assert any(_source(wf, p, "images") == (ret, 2) for p in _nodes_of(wf, "PreviewImage"))


def test_choi_manual_mask_chain():
    wf = load_workflow(REPO / "workflows" / "choi_manual_mask.json")
    (load,) = _nodes_of(wf, "LoadImageMask")
    # interaction_mask.png is a grayscale (L) PNG: LoadImageMask converts it to RGBA, so
    # red = the gray value, while alpha would be 255 everywhere (an empty mask after 1 - a).
    assert load["widgets_values"][:2] == [comfy_bridge.example_input_name("interaction_mask.png"), "red"]
    (sampler,) = _nodes_of(wf, "InteractCustomMaskGuidedSampler")
    grow, _ = _source(wf, sampler, "interaction_mask")
    assert grow["type"] == "GrowMask" and _source(wf, grow, "mask") == (load, 0)
    notes = " ".join(n["widgets_values"][0] for n in _nodes_of(wf, "Note"))
    assert "MaskEditor" in notes


# ------------------------------------------------------------------- example inputs

def test_example_inputs_are_installed_without_overwriting(tmp_path):
    mine = tmp_path / comfy_bridge.example_input_name("human.png")
    mine.write_bytes(b"the user's own file")
    written = comfy_bridge.install_example_inputs(tmp_path)
    images = sorted(p.name for p in comfy_bridge.EXAMPLES_DIR.iterdir() if p.suffix == ".png")
    assert sorted(p.name for p in written) == [comfy_bridge.example_input_name(n) for n in images if n != "human.png"]
    assert mine.read_bytes() == b"the user's own file"
    for name in images:
        if name != "human.png":
            target = tmp_path / comfy_bridge.example_input_name(name)
            assert target.read_bytes() == (comfy_bridge.EXAMPLES_DIR / name).read_bytes()
    assert comfy_bridge.install_example_inputs(tmp_path) == []  # idempotent
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(comfy_bridge.example_input_name(n) for n in images)


def test_example_inputs_not_installed_outside_comfyui():
    if comfy_bridge.IN_COMFYUI:
        pytest.skip("running inside ComfyUI")
    assert comfy_bridge.install_example_inputs() == []


def test_workflows_load_only_installed_examples():
    installed = {comfy_bridge.example_input_name(p.name) for p in comfy_bridge.EXAMPLES_DIR.iterdir()
                 if p.suffix.lower() in comfy_bridge.EXAMPLE_INPUT_SUFFIXES}
    used = set()
    for path in WORKFLOWS:
        for n in load_workflow(path)["nodes"]:
            if n["type"] in ("LoadImage", "LoadImageMask"):
                used.add(n["widgets_values"][0])
    assert used and used <= installed


# ------------------------------------------------------------- ComfyUI memory manager

def test_patcher_root_takes_modelpatcher_bookkeeping():
    """ComfyUI's ModelPatcher writes `device`, `model_loaded_weight_memory`, ... onto the
    module it manages; our models (IAMGModel.device is a read-only property) never see them."""
    import torch

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1)

        @property
        def device(self):
            return self.conv.weight.device

    model = Model()
    root = comfy_bridge.PatcherRoot(model)
    for name, value in [("device", torch.device("cpu")), ("model_loaded_weight_memory", 0),
                        ("model_lowvram", False), ("lowvram_patch_counter", 0)]:
        setattr(root, name, value)  # what ModelPatcher.__init__/load/unpatch_model do
    assert root.inner is model and not hasattr(model, "model_lowvram")
    assert set(root.state_dict()) == {"inner.conv.weight", "inner.conv.bias"}
