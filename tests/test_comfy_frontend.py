"""The shipped UI workflows in the real ComfyUI front end, driven by headless Chromium.

For each workflow: drop the file on the page exactly as a user's drag-and-drop does; check
that the front end finds every node type, keeps every widget value and shows no error
(dialogs, toasts, console); check that its own conversion (`app.graphToPrompt`) equals the
harness's; queue it through `app.queuePrompt` and check the saved images via /history.

Needs Debian's chromium + chromium-driver (no downloaded browser), the `selenium` package
and a ComfyUI checkout (see tests/README_comfyui.md); skips visibly without them.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_harness as ch  # noqa: E402  (tests/ is not a package; --import-mode=importlib)

pytestmark = pytest.mark.browser

WORKFLOWS = ch.workflow_files()
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                  "--window-size=1400,900"]
PAGE_TIMEOUT_S = 120  # first load on 2 busy cores can be slow; waits return as soon as ready


def find_browser() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) paths: $CHROMIUM_BIN / $CHROMEDRIVER, else from PATH."""
    browser = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    return browser, driver


# --------------------------------------------------------------------------- page driver

# Browser-side checks of the loaded graph: unknown node types, nodes flagged with errors,
# widget values the front end would not accept (combo value not among its options, number
# outside min/max), open dialogs and error toasts.
INSPECT_JS = """
const graph = app.graph;
const problems = [];
for (const node of graph._nodes) {
  if (!LiteGraph.registered_node_types[node.type]) problems.push(`node ${node.id}: type ${node.type} is missing`);
  if (node.has_errors) problems.push(`node ${node.id} (${node.type}) is flagged with errors`);
  for (const w of node.widgets || []) {
    const o = w.options || {};
    if (Array.isArray(o.values) && o.serialize !== false && !o.values.includes(w.value))
      problems.push(`node ${node.id} (${node.type}): ${w.name} = ${JSON.stringify(w.value)} is not one of its options`);
    if (typeof w.value === 'number' && ((o.min != null && w.value < o.min) || (o.max != null && w.value > o.max)))
      problems.push(`node ${node.id} (${node.type}): ${w.name} = ${w.value} outside [${o.min}, ${o.max}]`);
  }
}
const visible = (e) => e.offsetParent !== null || getComputedStyle(e).position === 'fixed';
// Dialogs; front ends 1.49+ report missing nodes and load errors in an error overlay instead.
const dialogs = [...document.querySelectorAll('.p-dialog, [data-testid="error-overlay"]')].filter(visible)
  .map(e => e.innerText.trim().slice(0, 500));
const toasts = [...document.querySelectorAll('.p-toast-message-error, .p-toast-message-warn')].map(e => e.innerText.trim().slice(0, 500));
return JSON.stringify({problems, dialogs, toasts,
  nodes: graph.serialize().nodes.map(n => ({id: n.id, type: n.type, widgets_values: n.widgets_values ?? null}))});
"""


# Layout problems of the live graph: nodes whose boxes (title bar included) overlap, and nodes
# that stick out of the group they were in when the workflow was saved (a node grows when a
# run shows an image preview in it). Reads `arguments[0]`: {node id: group title} at save time.
LAYOUT_JS = """
const nodes = app.graph._nodes.filter(n => !n.flags?.collapsed);
const box = (n) => { const b = n.getBounding(); return [b[0], b[1], b[0] + b[2], b[1] + b[3]]; };
const problems = [];
for (let i = 0; i < nodes.length; i++)
  for (let j = i + 1; j < nodes.length; j++) {
    const [a, b] = [box(nodes[i]), box(nodes[j])];
    const dx = Math.min(a[2], b[2]) - Math.max(a[0], b[0]), dy = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
    if (dx > 0 && dy > 0)
      problems.push(`nodes ${nodes[i].id} (${nodes[i].title}) and ${nodes[j].id} (${nodes[j].title}) overlap by ${Math.round(dx)}x${Math.round(dy)}`);
  }
const groups = Object.fromEntries((app.graph._groups || app.graph.groups || []).map(g => [g.title, g._bounding || g.bounding]));
for (const n of nodes) {
  const title = arguments[0][String(n.id)], g = title && groups[title];
  if (!g) continue;
  const b = box(n);
  if (b[0] < g[0] || b[1] < g[1] || b[2] > g[0] + g[2] || b[3] > g[1] + g[3])
    problems.push(`node ${n.id} (${n.title}) sticks out of its group "${title}": node ${b.map(Math.round)}, group ${Array.from(g).map(Math.round)}`);
}
return JSON.stringify(problems);
"""


def saved_groups(workflow: dict) -> dict[str, str]:
    """{node id: title of the group that holds its saved box (title bar included)}."""
    title_h = 30  # LiteGraph's title bar above pos
    out = {}
    for node in workflow["nodes"]:
        (x, y), (w, h) = node["pos"], node["size"]
        for g in workflow.get("groups", []):
            gx, gy, gw, gh = g["bounding"]
            if gx <= x and gy <= y - title_h and x + w <= gx + gw and y + h <= gy + gh:
                out[str(node["id"])] = g["title"]
    return out


class ComfyPage:
    """The ComfyUI page in headless Chromium (selenium + Debian's chromedriver)."""

    def __init__(self, server: ch.ComfyServer, browser: str, driver: str):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.server = server
        self.profile = tempfile.mkdtemp(prefix="comfy_chromium_")
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser
        for flag in CHROMIUM_FLAGS + [f"--user-data-dir={self.profile}"]:
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # An explicit driver path: selenium then never tries to download one.
        self.driver = webdriver.Chrome(service=Service(driver), options=opts)
        self.driver.set_page_load_timeout(PAGE_TIMEOUT_S)
        self.driver.set_script_timeout(PAGE_TIMEOUT_S)

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait_for(self, script: str, what: str, timeout: float = PAGE_TIMEOUT_S, *args):
        """Poll a JS expression (a `return ...` body) until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"browser: {what} not within {timeout:.0f} s; console:\n"
                                   + "\n".join(str(e) for e in self.console()))
            time.sleep(0.2)

    def open(self) -> None:
        """(Re)load the page and wait until the app is up and its start-up graph loaded."""
        self.driver.get(self.server.url + "/")
        self.wait_for("return !!(window.app && app.vueAppReady && app.graph && window.LiteGraph"
                      " && Object.keys(LiteGraph.registered_node_types).length)", "the ComfyUI app")
        # The start-up (default) graph is loaded right after; a drop before it would be replaced.
        try:
            self.wait_for("return app.graph._nodes.length > 0", "the start-up graph", timeout=5)
        except TimeoutError:
            pass  # an empty start-up graph is fine too
        self.console()  # drop start-up messages (e.g. the update check failing offline)

    def console(self) -> list[dict]:
        """Browser console entries since the last call."""
        return self.driver.get_log("browser")

    def drop_workflow(self, workflow: dict, filename: str) -> None:
        """Drop the workflow as a .json file on the page, as a user's drag-and-drop does,
        and wait until the graph holds exactly its nodes."""
        self.js("""
            const [text, name] = arguments;
            const dt = new DataTransfer();
            dt.items.add(new File([text], name, {type: 'application/json'}));
            document.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        """, json.dumps(workflow), filename)
        # Saved files hold numeric ids; the live graph of newer front ends (1.49+) holds strings.
        want = sorted(str(n["id"]) for n in workflow["nodes"])
        self.wait_for("return JSON.stringify(app.graph._nodes.map(n => String(n.id)).sort()) === arguments[0]",
                      f"the dropped workflow {filename}", PAGE_TIMEOUT_S, json.dumps(want, separators=(",", ":")))
        time.sleep(0.5)  # let post-load hooks (primitive widgets, dialogs) settle

    def layout_problems(self, workflow: dict) -> list[str]:
        """Overlapping nodes and nodes out of their saved group, in the live graph now."""
        return json.loads(self.js(LAYOUT_JS, saved_groups(workflow)))

    def inspect(self) -> dict:
        return json.loads(self.js(INSPECT_JS))

    def graph_to_prompt(self) -> dict:
        """The API prompt the front end would post now (`app.graphToPrompt().output`)."""
        out = self.driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            app.graphToPrompt().then(p => done(JSON.stringify(p.output))).catch(e => done('ERROR ' + e));
        """)
        assert not out.startswith("ERROR"), out
        return json.loads(out)

    def queue(self) -> str:
        """Queue the graph with the UI's own `app.queuePrompt`; the server's prompt_id."""
        self.js("""
            window.__queued = null;
            if (!app.api.__wrapped) {
              const orig = app.api.queuePrompt.bind(app.api);
              app.api.queuePrompt = async (...a) => {
                try { const r = await orig(...a); window.__queued = {ok: r}; return r; }
                catch (e) { window.__queued = {error: String(e && (e.message || e)), body: e && e.response}; throw e; }
              };
              app.api.__wrapped = true;
            }
            app.queuePrompt(0, 1);
        """)
        res = json.loads(self.wait_for("return window.__queued && JSON.stringify(window.__queued)",
                                       "the queue request's answer"))
        assert "ok" in res, f"the front end's queue request failed: {res}\n{self.inspect()['dialogs']}"
        return res["ok"]["prompt_id"]


def console_errors(entries: list[dict]) -> list[str]:
    """Errors the page reported, minus network failures that are no fault of a workflow
    (offline update checks, absent optional user files)."""
    errors = []
    for e in entries:
        if e.get("level") != "SEVERE":
            continue
        if e.get("source") == "network" and ("Failed to load resource" in e.get("message", "")):
            continue
        # PrimeVue's BlockUI in front end 1.49 removes its mask twice when a run starts (its
        # own bug, on any workflow, core nodes included).
        if "Failed to execute 'removeChild'" in e.get("message", "") and "removeMask" in e.get("message", ""):
            continue
        errors.append(e.get("message", str(e)))
    return errors


def assert_values_kept(workflow: dict, loaded: list[dict]) -> None:
    """The front end kept every saved widget value (none dropped, clamped or replaced)."""
    by_id = {str(n["id"]): n for n in loaded}  # string ids in newer front ends
    changed = []
    for node in workflow["nodes"]:
        saved, now = node.get("widgets_values"), by_id[str(node["id"])]["widgets_values"]
        if saved is None or node["type"] in ch.NOTE_NODES or (saved == [] and now is None):
            continue  # newer front ends serialize a node without widgets as None, not []
        if isinstance(saved, dict) or now is None:
            if saved != now:
                changed.append((node["id"], node["type"], saved, now))
            continue
        same = len(saved) == len(now) and all(
            math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) if isinstance(a, (int, float)) and isinstance(b, (int, float))
            else a == b for a, b in zip(saved, now))
        if not same:
            changed.append((node["id"], node["type"], saved, now))
    assert not changed, "widget values changed on load (id, type, saved, loaded): " + repr(changed)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def server(request) -> ch.ComfyServer:
    return ch.server_fixture(request)


@pytest.fixture(scope="module")
def page(request) -> ComfyPage:
    ch.skip_without_comfyui()
    browser, driver = find_browser()
    if not browser or not driver:
        ch.unavailable("Debian chromium/chromium-driver not installed (apt-get install -y chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        ch.unavailable("selenium not installed (pip install -e '.[test]')")
    p = ComfyPage(request.getfixturevalue("server"), browser, driver)  # server only once a browser exists
    yield p
    p.close()


def load_and_queue(page: ComfyPage, workflow: dict, filename: str, expect: dict, *, check_layout: bool = True) -> None:
    """The whole user path for one workflow, with every check on the way (the layout after
    the run for the workflows we ship)."""
    page.open()
    page.drop_workflow(workflow, filename)
    state = page.inspect()
    assert not state["problems"], "front end rejected the workflow:\n" + "\n".join(state["problems"])
    assert not state["dialogs"], f"dialogs after loading {filename}: {state['dialogs']}"
    assert not state["toasts"], f"error/warning toasts after loading {filename}: {state['toasts']}"
    assert_values_kept(workflow, state["nodes"])
    # The harness's converter must post what the front end posts.
    assert page.graph_to_prompt() == ch.workflow_to_prompt(workflow, page.server.object_info())
    prompt_id = page.queue()
    result = page.server.wait(prompt_id, timeout=expect.get("timeout_s", 600))
    ch.check_outputs(page.server, result, expect)
    errors = console_errors(page.console())
    assert not errors, f"console errors while loading/queueing {filename}: {errors}"
    # The run's previews grow nodes: laid out so that nothing overlaps after a run.
    if check_layout:
        time.sleep(1)
        layout = page.layout_problems(workflow)
        assert not layout, f"{filename} after a run:\n" + "\n".join(layout)
    state = page.inspect()
    assert not state["dialogs"], f"dialogs after queueing {filename}: {state['dialogs']}"


# --------------------------------------------------------------------------- tests

def test_core_workflow_in_browser(page):
    wf, expect = ch.core_nodes_workflow(page.server.object_info())
    load_and_queue(page, wf, "harness_core.json", expect, check_layout=False)  # the harness's, not shipped


def layout_checked_types(server: ch.ComfyServer) -> list[str]:
    """The node types whose widget layout the harness must read right: ours and the core
    types our workflows (and the harness's own core workflow) use. ComfyUI's other node
    types are its front end's business (1.49 lays out many of them its own way)."""
    used = {n["type"] for path in WORKFLOWS for n in json.loads(path.read_text())["nodes"]}
    core_wf, _ = ch.core_nodes_workflow(server.object_info())
    used |= {n["type"] for n in core_wf["nodes"]}
    return sorted((set(server.package_node_types()) | used) & set(server.object_info()))


def test_widget_layout_matches_front_end(page):
    """For each node type we send (see layout_checked_types), the front end creates exactly
    the widgets, in the order, that `widget_slots` assumes when it reads widgets_values
    (control_after_generate and upload values included)."""
    info = page.server.object_info()
    page.open()
    layouts = json.loads(page.js("""
        const out = {};
        for (const type of arguments[0]) {
          try {
            const node = LiteGraph.createNode(type);
            app.graph.add(node);
            out[type] = {widgets: (node.widgets || []).map(w => w.name), values: (node.serialize().widgets_values || []).length};
            app.graph.remove(node);
          } catch (e) { out[type] = {error: String(e)}; }
        }
        return JSON.stringify(out);
    """, layout_checked_types(page.server)))
    wrong = {}
    for type_, got in layouts.items():
        if got.get("widgets"):  # 1.49+ names the control widget by its value ("fixed"...)
            got["widgets"] = ["control_after_generate" if w in ch.CONTROL_VALUES else w for w in got["widgets"]]
        want = [slot.name for slot in ch.widget_slots(info[type_])]
        if got.get("widgets") != want or got.get("values") != len(want):
            wrong[type_] = (got, want)
    assert not wrong, f"front end vs widget_slots (front end, harness): {wrong}"
    assert set(page.server.package_node_types()) <= set(layouts)


def test_missing_node_is_detected(page):
    """Negative control: the checks above do see a workflow the front end cannot load."""
    wf, _ = ch.core_nodes_workflow(page.server.object_info())
    wf["nodes"][1]["type"] = "NoSuchNodeType"
    page.open()
    page.drop_workflow(wf, "harness_missing.json")
    state = page.inspect()
    assert any("NoSuchNodeType is missing" in p for p in state["problems"]), state["problems"]
    assert any("NoSuchNodeType" in d for d in state["dialogs"]), state["dialogs"]


def test_overlapping_nodes_are_detected(page):
    """Negative control for the layout check: a node moved onto another, and a node moved
    out of its group, are both reported."""
    wf = json.loads((ch.REPO / "workflows" / "choi_background.json").read_text())
    nodes = {n["type"]: n for n in wf["nodes"]}
    mask_node, save_node = nodes["InteractCustomIAMGGenerateMask"], nodes["SaveImage"]
    mask_node["pos"] = [mask_node["pos"][0] + 40, mask_node["pos"][1]]  # its right edge leaves the group
    preview = next(n for n in wf["nodes"] if n["type"] == "PreviewImage")
    preview["pos"] = list(save_node["pos"])
    page.open()
    page.drop_workflow(wf, "harness_overlap.json")
    problems = page.layout_problems(json.loads((ch.REPO / "workflows" / "choi_background.json").read_text()))
    assert any("overlap" in p and "Save Image" in p for p in problems), problems
    assert any("IAMG Generate Mask" in p and "sticks out of its group" in p for p in problems), problems


def test_bad_widget_value_is_detected(page):
    """Negative control: a combo value the node does not offer is reported."""
    wf, _ = ch.core_nodes_workflow(page.server.object_info())
    scale = next(n for n in wf["nodes"] if n["type"] == "ImageScale")
    scale["widgets_values"][0] = "no-such-method"
    page.open()
    page.drop_workflow(wf, "harness_bad_value.json")
    state = page.inspect()
    assert any("upscale_method" in p and "no-such-method" in p for p in state["problems"]), state["problems"]


@pytest.mark.parametrize("path", WORKFLOWS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no workflows/*.json yet"))], ids=[p.name for p in WORKFLOWS] or ["none"])
def test_shipped_workflow_in_browser(page, path):
    wf, expect = ch.prepare_shipped_workflow(path, page.server)
    load_and_queue(page, wf, path.name, expect)
