"""The package in a real ComfyUI server: every shipped UI workflow converts, runs and saves
the expected images; cancel, validation errors, execution errors and caching behave.

Needs a ComfyUI checkout (COMFYUI_DIR or ~/ComfyUI, see tests/README_comfyui.md); without
one these tests skip, saying so. The converter tests at the top need no server.
Until the package has nodes, a workflow of ComfyUI core nodes (comfy_harness.core_nodes_workflow)
proves the harness.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_harness as ch  # noqa: E402  (tests/ is not a package; --import-mode=importlib)

WORKFLOWS = ch.workflow_files()


# --------------------------------------------------------------------------- fixtures

# Every ComfyUI set up on this machine (0.33.0 and 0.3.64, the newest and the oldest we
# support), or $COMFYUI_DIR alone; none: the tests skip saying so.
CHECKOUTS = ch.server_checkouts() or [None]


@pytest.fixture(scope="module", params=CHECKOUTS, ids=[ch.checkout_id(c) for c in CHECKOUTS])
def server(request) -> ch.ComfyServer:
    return ch.server_fixture(request)


def unique_color() -> int:
    """An EmptyImage colour no earlier prompt used, so its node is not served from cache."""
    return uuid.uuid4().int % 0xFFFFFF


def small_prompt(color: int, prefix: str = "harness_small") -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


# --------------------------------------------------------------------------- converter (no server)

# Hand-written node definitions in /object_info's format, covering the layout rules.
MINI_OBJECT_INFO = {
    "Gen": {"input": {"required": {"model": ["MODEL"], "seed": ["INT", {"default": 0, "control_after_generate": True}],
                                   "steps": ["INT", {"default": 20}], "mode": [["a", "b"]]},
                      "optional": {"strength": ["FLOAT", {"default": 1.0}], "hint": ["STRING", {"forceInput": True}]}},
            "input_order": {"required": ["model", "seed", "steps", "mode"], "optional": ["strength", "hint"]},
            "output": ["IMAGE"], "output_name": ["IMAGE"], "display_name": "Gen"},
    "Load": {"input": {"required": {"image": [["x.png", "y.png"], {"image_upload": True}], "channel": [["red", "alpha"]]}},
             "input_order": {"required": ["image", "channel"]}, "output": ["MODEL"], "output_name": ["MODEL"]},
    "Blur": {"input": {"required": {"image": ["IMAGE"], "radius": ["INT", {"default": 1}]}},
             "input_order": {"required": ["image", "radius"]}, "output": ["IMAGE"], "output_name": ["IMAGE"]},
    "Save": {"input": {"required": {"images": ["IMAGE"]}}, "input_order": {"required": ["images"]},
             "output": [], "output_name": [], "output_node": True},
}


def test_widget_slots_follow_front_end_layout():
    slots = [(s.name, s.kind) for s in ch.widget_slots(MINI_OBJECT_INFO["Gen"])]
    assert slots == [("seed", "value"), ("control_after_generate", "control"), ("steps", "value"),
                     ("mode", "value"), ("strength", "value")]
    # The upload button's value comes after all required widgets (LoadImageMask: image, channel, upload).
    assert [s.kind for s in ch.widget_slots(MINI_OBJECT_INFO["Load"])] == ["value", "value", "upload"]


def test_converter_rules_without_server():
    b = ch.WorkflowBuilder(MINI_OBJECT_INFO)
    load = b.add("Load", {"image": "y.png"})
    gen = b.add("Gen", {"seed": 7, "steps": 3, "mode": "b"}, control="randomize")
    bypassed = b.add("Blur", mode=ch.MODE_BYPASS)
    muted = b.add("Blur", mode=ch.MODE_NEVER)
    save = b.add("Save")
    save2 = b.add("Save")
    prim = b.add_primitive(11, "INT")
    b.connect(load, 0, gen, "model")
    b.connect(prim, 0, gen, "steps")
    b.connect(gen, 0, bypassed, "image")
    b.connect(bypassed, 0, save, "images")
    b.connect(gen, 0, muted, "image")
    b.connect(muted, 0, save2, "images")
    b.add_note("ignored")
    prompt = ch.workflow_to_prompt(b.build(), MINI_OBJECT_INFO)
    assert set(prompt) == {str(load), str(gen), str(save), str(save2)}
    assert prompt[str(load)]["inputs"] == {"image": "y.png", "channel": "red"}
    assert prompt[str(gen)]["inputs"] == {"model": [str(load), 0], "seed": 7, "steps": 11, "mode": "b", "strength": 1.0}
    assert prompt[str(save)]["inputs"] == {"images": [str(gen), 0]}  # through the bypassed Blur
    assert prompt[str(save2)]["inputs"] == {}  # its source is muted


def test_converter_errors_are_readable():
    b = ch.WorkflowBuilder(MINI_OBJECT_INFO)
    b.add("Blur")
    wf = b.build()
    wf["nodes"][0]["widgets_values"] = [1, 2, 3]
    with pytest.raises(ch.WorkflowError, match=r"node 1 \(Blur\): widgets_values has 3 values.*expected 1"):
        ch.workflow_to_prompt(wf, MINI_OBJECT_INFO)
    wf["nodes"][0]["type"] = "NotInstalled"
    with pytest.raises(ch.MissingNodeTypes, match=r"NotInstalled \(node 1\)"):
        ch.workflow_to_prompt(wf, MINI_OBJECT_INFO)


# --------------------------------------------------------------------------- server

@pytest.mark.server
def test_server_loads_package(server):
    assert server.package_import_error() is None, server.package_import_error()
    assert str(server.package_path) in server.log_text(), "ComfyUI did not list the package among its custom nodes"
    # Every node the package declares is registered (python_module = custom_nodes.<folder>).
    from interact_custom.nodes import NODE_CLASS_MAPPINGS

    assert set(server.package_node_types()) == set(NODE_CLASS_MAPPINGS)


@pytest.mark.server
def test_core_workflow_runs(server):
    wf, expect = ch.core_nodes_workflow(server.object_info())
    result = server.run_workflow(wf, timeout=120)
    images = ch.check_outputs(server, result, expect)
    # Exact pixels: the bypassed blur must not have run, the inversion must have.
    # SaveImage truncates 255*value to uint8, so 255 - v may come back as 254 - v.
    inverted = images["4"][0].convert("RGB")
    for x, y in [(0, 0), (13, 7), (30, 21), (47, 39)]:
        want = [255 - c for c in ch.pattern_pixel(x, y)]
        got = inverted.getpixel((x, y))
        assert all(w - 1 <= g <= w for g, w in zip(got, want)), f"pixel ({x}, {y}): {got}, expected {want} (-1)"
    # nearest-exact 48x40 -> 24x20 samples source pixel floor((i + 0.5) * 2) = 2i + 1.
    scaled = images["9"][0].convert("RGB")
    got, want = scaled.getpixel((5, 3)), ch.pattern_pixel(11, 7)
    assert all(w - 1 <= g <= w for g, w in zip(got, want)), f"scaled pixel (5, 3): {got}, expected {want} (-1)"


@pytest.mark.server
@pytest.mark.parametrize("path", WORKFLOWS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no workflows/*.json yet"))], ids=[p.name for p in WORKFLOWS] or ["none"])
def test_shipped_workflow_runs(server, path):
    wf, expect = ch.prepare_shipped_workflow(path, server)
    result = server.run_workflow(wf, timeout=expect.get("timeout_s", 600))
    ch.check_outputs(server, result, expect)


@pytest.mark.server
def test_memory_manager_log_names_our_models(server):
    # ComfyUI logs "Requested to load <class name>": ours say which model and file.
    path = next(p for p in WORKFLOWS if p.stem == "choi_background")
    wf, expect = ch.prepare_shipped_workflow(path, server)
    server.run_workflow(wf, timeout=expect.get("timeout_s", 600)).raise_for_error()
    log = server.log_text()
    assert "Requested to load IAMG[(embedded) default]" in log
    assert "Requested to load MGIG[(embedded) default]" in log
    assert "Requested to load PatcherRoot" not in log


@pytest.mark.server
def test_template_browser_lists_the_workflows_with_thumbnails(server):
    # What Workflow -> Browse Templates asks for: the list, then <name>.jpg per workflow.
    listing = server.get_json("/api/workflow_templates")
    ours = [k for k, names in listing.items() if {p.stem for p in WORKFLOWS} <= set(names)]
    assert ours, f"our workflows are not listed: {listing}"
    for path in WORKFLOWS:
        with server._request("GET", f"/api/workflow_templates/{ours[0]}/{path.stem}.jpg") as r:
            assert r.status == 200 and r.read(3) == b"\xff\xd8\xff", f"{path.stem}.jpg not served as a JPEG"
        with server._request("GET", f"/api/workflow_templates/{ours[0]}/{path.name}") as r:
            assert json.load(r)["nodes"], f"{path.name} not served"


def probe_lib(py: str) -> str:
    """The lib/ folder of the torchaudio installed for interpreter `py`."""
    code = ("import importlib.util as u, os; "
            "print(os.path.join(os.path.dirname(u.find_spec('torchaudio').origin), 'lib'))")
    return subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip()


@pytest.mark.server
def test_the_server_runs_beside_the_torchaudio_users_have(server):
    # What many users have (and what tests/setup_comfyui.sh installs): a torchaudio built for
    # another torch. ComfyUI 0.3.x starts beside it, and the pack must treat it as absent;
    # 0.33.0 imports torchaudio at start-up, so its set-up sets the compiled extension aside
    # (an importable torchaudio without ops), which the pack must leave alone.
    py = ch.find_comfyui_python(server.comfy_dir)
    probe = subprocess.run([py, "-c", "import torchaudio"], capture_output=True, text=True, timeout=120)
    set_aside = bool(list(Path(probe_lib(py)).glob("_torchaudio*.set-aside")))
    if probe.returncode == 0 and not set_aside:
        ch.unavailable("ComfyUI's python has a working torchaudio: the broken-torchaudio case is not exercised "
                       "(tests/setup_comfyui.sh --torchaudio broken sets it up)")
    wf, expect = ch.prepare_shipped_workflow(WORKFLOWS[0], server)
    server.run_workflow(wf, timeout=expect.get("timeout_s", 600)).raise_for_error()
    if set_aside:
        assert probe.returncode == 0, probe.stderr[-2000:]
        assert "installed torchaudio cannot be imported" not in server.log_text()
    else:
        assert "_torchaudio" in probe.stderr or "torchaudio" in probe.stderr
        assert "installed torchaudio cannot be imported" in server.log_text()


@pytest.mark.server
def test_workflows_ship_once_nodes_exist(server):
    types = server.package_node_types()
    assert types, "the server lists none of the package's nodes"
    assert WORKFLOWS, f"the package has nodes {types} but ships no workflows/*.json to test them"
    used = {n["type"] for p in WORKFLOWS for n in json.loads(p.read_text())["nodes"]}
    assert used & set(types), f"no shipped workflow uses any of the package's nodes {types}"


@pytest.mark.server
def test_identical_run_is_served_from_cache(server):
    prompt = small_prompt(unique_color(), "harness_cache")
    first = server.run(prompt, timeout=60).raise_for_error()
    assert "1" not in first.cached_nodes, "a new EmptyImage colour cannot come from the cache"
    second = server.run(prompt, timeout=60).raise_for_error()
    assert second.cached_nodes == set(prompt), f"executed again: {set(prompt) - second.cached_nodes}"
    assert second.images("2") == first.images("2"), "a cached run must report the same saved image"


@pytest.mark.server
def test_interrupt_long_prompt_then_server_still_works(server):
    # A chain of slow core nodes (~1 s each on CPU); ComfyUI checks for an interrupt
    # before every node, so the chain stops at the next node after /interrupt.
    n_blurs = 12
    prompt = {"1": {"class_type": "EmptyImage",
                    "inputs": {"width": 1024, "height": 1024, "batch_size": 1, "color": unique_color()}}}
    for i in range(n_blurs):
        prompt[str(i + 2)] = {"class_type": "ImageBlur",
                              "inputs": {"image": [str(i + 1), 0], "blur_radius": 31, "sigma": 10.0}}
    last = str(n_blurs + 2)
    prompt[last] = {"class_type": "PreviewImage", "inputs": {"images": [str(n_blurs + 1), 0]}}
    pid = server.queue(prompt)
    deadline = time.monotonic() + 60
    while not server.is_running(pid):
        assert time.monotonic() < deadline, "the long prompt never started"
        time.sleep(0.1)
    time.sleep(1.0)
    server.interrupt(pid)
    result = server.wait(pid, timeout=120)
    assert result.interrupted and not result.ok, f"expected an interrupt, got {result.status}: {result.messages}"
    stopped = result.message("execution_interrupted")
    assert last not in stopped["executed"] and len(stopped["executed"]) < len(prompt) - 1, stopped
    assert not result.outputs.get(last)
    # The server stays usable: the next prompt runs to the end.
    follow = server.run(small_prompt(unique_color(), "harness_after_interrupt"), timeout=60)
    ch.check_outputs(server, follow, {"outputs": {"2": {"count": 1, "size": [32, 24], "allow_blank": True}}})


def mgig_sampling_prompt(steps: int, *, box=None, mask_value: float = 1.0) -> dict:
    """Our MGIG chain on plain inputs (grey images, solid masks), embedded default weights."""
    prompt = {
        "1": {"class_type": "InteractCustomLoadMGIG", "inputs": {
            "model_name": "(embedded) default", "dtype": "fp32", "device": "cpu", "keep_model_loaded": True}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 192, "batch_size": 1,
                                                     "color": unique_color()}},
        "3": {"class_type": "SolidMask", "inputs": {"value": mask_value, "width": 256, "height": 192}},
        "4": {"class_type": "InteractCustomIDFeatures", "inputs": {
            "mgig_model": ["1", 0], "human_image": ["2", 0], "human_mask": ["3", 0],
            "object_image": ["2", 0], "object_mask": ["3", 0]}},
        "5": {"class_type": "InteractCustomDetailMap", "inputs": {
            "reference_canvas": ["4", 1], "canvas_mask": ["4", 2], "threshold": 50}},
        "6": {"class_type": "InteractCustomMaskGuidedSampler", "inputs": {
            "mgig_model": ["1", 0], "id_features": ["4", 0], "detail_map": ["5", 0], "interaction_mask": ["3", 0],
            "steps": steps, "sampler": "ddim", "guidance": 5.0, "control_strength": 1.0, "seed": 0,
            "batch_size": 1, "mask_channel": "mask", "crop_ratio": 1.3, "paste": "mask", "collage": "box",
            "background": ["2", 0]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    if box is not None:
        prompt["8"] = {"class_type": "InteractCustomBox", "inputs": dict(zip(("x", "y", "width", "height"), box))}
        prompt["6"]["inputs"]["box"] = ["8", 0]
    return prompt


@pytest.mark.server
def test_cancel_during_our_sampling_stops_within_a_step(server):
    # 1000 DDIM steps would take minutes; Cancel must land inside the sampling loop.
    pid = server.queue(mgig_sampling_prompt(1000))
    deadline = time.monotonic() + 120
    while not server.is_running(pid):
        assert time.monotonic() < deadline, "the sampling prompt never started"
        time.sleep(0.1)
    time.sleep(15.0)  # past model loading and ID features, well into sampling
    server.interrupt(pid)
    t0 = time.monotonic()
    result = server.wait(pid, timeout=120)
    stopped_after = time.monotonic() - t0
    assert result.interrupted, f"expected an interrupt, got {result.status}: {result.messages}"
    assert result.message("execution_interrupted")["node_type"] == "InteractCustomMaskGuidedSampler"
    assert stopped_after < 30, f"sampling took {stopped_after:.1f} s to stop after Cancel"
    assert not result.outputs.get("7")
    server.run(mgig_sampling_prompt(2), timeout=180).raise_for_error()  # still usable


# Bad inputs and the error a user must see. Add the package's own cases here (e.g. a
# missing/mismatched checkpoint, a mask of the wrong size) with the message it raises.
BAD_INPUTS = {
    "value_below_min": (
        lambda: {**small_prompt(1), "1": {**small_prompt(1)["1"], "inputs": {**small_prompt(1)["1"]["inputs"], "width": 0}}},
        ch.PromptRejected, r"node 1 \(EmptyImage\): Value 0 smaller than min of 1: width"),
    "missing_input_file": (
        lambda: {"1": {"class_type": "LoadImage", "inputs": {"image": "no_such_file.png"}},
                 "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}},
        ch.PromptRejected, r"node 1 \(LoadImage\): .*Invalid image file: no_such_file.png"),
    "unknown_node_type": (
        lambda: {"1": {"class_type": "NoSuchNode", "inputs": {}}},
        ch.PromptRejected, r"NoSuchNode"),
    "box_outside_background": (
        lambda: mgig_sampling_prompt(2, box=(200, 100, 100, 100)),
        ch.ExecutionFailed, r"box \(x=200, y=100, width=100, height=100\) lies outside the 256x192 background"),
    "empty_mask": (
        lambda: mgig_sampling_prompt(2, mask_value=0.0),
        ch.ExecutionFailed, r"human_mask is empty \(all zero\)"),
    "node_raises": (
        lambda: small_prompt(unique_color(), "../outside_output_folder"),
        ch.ExecutionFailed, r"node 2 \(SaveImage\) raised Exception: .*Saving image outside the output folder is not allowed"),
}


@pytest.mark.server
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_readable_error(server, case):
    make_prompt, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        server.run(make_prompt(), timeout=60).raise_for_error()
    # ... and the server goes on working.
    server.run(small_prompt(unique_color()), timeout=60).raise_for_error()


# --------------------------------------------------------------------------- IAMG-R mask banks
# A user of a shared server can upload any file (POST /upload/image) and queue any prompt.
# The bank widget offers only registered banks, and a bank's entries cannot lead out of it,
# so no prompt makes IAMG-R -> MaskToImage -> SaveImage hand out a file of the server's.

BANK_NODE = "InteractCustomIAMGRRetrieveMask"
BANK_QUERY = "a person is riding the bicycle"


def bank_prompt(bank: str, prefix: str) -> dict:
    """What an attacker queues: the chosen bank's best mask, saved as an image /view serves."""
    return {"1": {"class_type": BANK_NODE, "inputs": {"bank": bank, "query": BANK_QUERY, "category": "",
                                                      "top_k": 2, "candidate": 1}},
            "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}


def bank_index(*masks: str) -> bytes:
    return json.dumps({"entries": [{"id": f"e{i}", "caption": BANK_QUERY, "category": "ride bicycle", "mask": m}
                                   for i, m in enumerate(masks)]}).encode()


def private_png(server: ch.ComfyServer) -> Path:
    """A PNG of the server's own, outside every folder ComfyUI serves."""
    from PIL import Image

    path = server.workdir / "private" / "secret.png"
    path.parent.mkdir(exist_ok=True)
    Image.frombytes("L", (4, 4), bytes([0, 255] * 8)).save(path)
    return path


def bank_choices(server: ch.ComfyServer) -> list[str]:
    return server.object_info(refresh=True)[BANK_NODE]["input"]["required"]["bank"][0]


@pytest.mark.server
def test_bank_widget_refuses_an_uploaded_bank_folder(server):
    secret = private_png(server)
    index = bank_index(str(secret), "../../private/secret.png")
    answer = server.upload("bank.json", index, subfolder="evilbank")
    assert answer["subfolder"] == "evilbank"
    assert (server.input_dir / "evilbank" / "bank.json").read_bytes() == index  # the upload itself is allowed

    for given in (str(server.input_dir / "evilbank"), "evilbank", "../input/evilbank", "~", str(secret.parent)):
        with pytest.raises(ch.PromptRejected, match=rf"node 1 \({BANK_NODE}\): Value not in list: bank: "):
            server.run(bank_prompt(given, "bank_upload_attack"), timeout=120)
    assert not list(server.output_dir.glob("bank_upload_attack*"))
    choices = bank_choices(server)
    assert "(shipped) example bank" in choices and "evilbank" not in choices


@pytest.mark.server
def test_registered_bank_cannot_read_files_outside_it(server):
    import io

    import numpy as np
    from PIL import Image

    from interact_custom.pipelines import retrieval as R

    from interact_custom.cli.research import banks

    tag = uuid.uuid4().hex[:8]
    secret = private_png(server)
    evil = server.banks_dir / f"evil_{tag}"
    (evil / "masks").mkdir(parents=True)
    (evil / "masks" / "link.png").symlink_to(secret)
    (evil / "bank.json").write_bytes(bank_index("masks/link.png"))
    mask = np.zeros((24, 16), np.uint8)
    mask[3:20, 2:13] = 255
    good = banks.build_bank(None, server.banks_dir / f"good_{tag}", sources=[
        banks.BankSource(id="ride", caption=BANK_QUERY, verb="ride", object="bicycle", human_mask=mask,
                     object_mask=np.zeros_like(mask)),
        banks.BankSource(id="kick", caption="a person is kicking the ball", verb="kick", object="ball",
                     human_mask=mask[::-1].copy(), object_mask=np.zeros_like(mask))])

    for rel in (str(secret), "../../private/secret.png", "masks/../../../private/secret.png", "masks/link.png"):
        (evil / "bank.json").write_bytes(bank_index(rel))
        messages = []
        for present in (True, False):  # the same answer whether or not the file is there
            if present:
                private_png(server)
            else:
                secret.unlink()
            with pytest.raises(ch.ExecutionFailed) as e:
                server.run(bank_prompt(evil.name, f"bank_evil_{tag}"), timeout=120).raise_for_error()
            messages.append(e.value.message["exception_message"].strip())
        assert messages[0] == messages[1], rel
        assert messages[0].startswith(f"mask bank '{evil.name}': entry 'e0' names mask {rel!r}, which is not a "
                                      "file inside the bank folder"), messages[0]
        assert str(server.banks_dir) not in messages[0]
    assert not list(server.output_dir.glob(f"bank_evil_{tag}*"))
    assert {evil.name, good.root.name} <= set(bank_choices(server))

    # A well-formed registered bank works, and its embedding cache stays in ComfyUI's models folder.
    result = server.run(bank_prompt(good.root.name, f"bank_good_{tag}"), timeout=120).raise_for_error()
    (ref,) = result.images("3")
    saved = np.asarray(Image.open(io.BytesIO(server.fetch(ref))).convert("L"))
    np.testing.assert_array_equal(saved, np.round(good.load_mask(good.entries[0]) * 255).astype(np.uint8))
    if not os.environ.get("INTERACT_CUSTOM_CACHE"):  # else the server caches there
        cache = server.comfy_dir / "models" / "interact_custom_cache" / "bank_embeddings"
        made = list(cache.glob(f"good_{tag}-*"))
        try:
            assert len(made) == 1 and sorted(p.suffix for p in made[0].iterdir()) == [".json", ".npy"]
            assert not list(cache.glob(f"evil_{tag}-*"))  # nothing cached for a refused bank
        finally:
            for folder in made:
                shutil.rmtree(folder, ignore_errors=True)
