"""Run this package's nodes and UI workflows in a real ComfyUI server (test harness).

Nothing here imports ComfyUI: the server runs as a subprocess with ComfyUI's own Python
(ComfyUI pins its own torch / front end, which must not leak into the project's test venv),
and everything goes through its HTTP API on a loopback port. Standard library only
(Pillow, a runtime dependency of the package, for the output-image checks).

Where things are found:
  * ComfyUI checkout: $COMFYUI_DIR, else the newest ~/.cache/interact_custom/ComfyUI-*
    (tests/setup_comfyui.sh makes one); none: the tests skip, also under CI.
  * Its Python: $COMFYUI_PYTHON, else $COMFYUI_DIR/.venv/bin/python, else this interpreter.

Main pieces:
  * `ComfyServer`: start/stop a server with private input/output/user/temp folders that
    loads this repository as a custom-node package; `queue`, `wait`, `run`, `interrupt`,
    `fetch`, `upload` (POST /upload/image), plus the server log.
  * `workflow_to_prompt`: the UI-workflow -> API-prompt conversion the front end does on
    "Queue" (ComfyUI's server has none), driven by `/object_info`.
  * `WorkflowBuilder`: write small UI-format workflows in tests, laid out as the front
    end saves them; `core_nodes_workflow` is one built from ComfyUI's core nodes only,
    which tests the harness itself, independently of this package's nodes.
  * `load_expectations` / `check_outputs`: what each shipped workflow must produce
    (tests/comfy_workflows.json) and the checks on the saved images.
"""
from __future__ import annotations

import atexit
import copy
import json
import os
import struct
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[1]
# Name under which ComfyUI imports this repository when the repo's parent folder cannot be
# used as a custom_nodes folder as is (it holds other folders, which ComfyUI would import too).
PACKAGE_LINK_NAME = "interact_custom"

# Node types that exist only in the front end: never sent to the server.
PRIMITIVE_NODE = "PrimitiveNode"  # holds a value for the widget input(s) it is linked to
REROUTE_NODE = "Reroute"  # passes its single input through
NOTE_NODES = frozenset({"Note", "MarkdownNote"})
FRONTEND_ONLY_NODES = frozenset({PRIMITIVE_NODE, REROUTE_NODE}) | NOTE_NODES

# The model folder name our IAMG-R node lists mask banks from (nodes/comfy_bridge.py BANK_FOLDER).
BANK_FOLDER = "interact_custom_banks"

# LiteGraph node modes (node["mode"]).
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4  # NEVER = "muted" in the UI

# Input types the front end shows as widgets (a list spec is a combo).
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
# Spec options that make the front end add an upload button widget; it serializes a value
# ("image", ...) into widgets_values after the node's required widgets, but never sends it.
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "file_upload")
# Values of the hidden "control_after_generate" widget that follows a seed-like input.
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})
# Older front ends (and the current one, when the spec does not say) add the control to INT
# inputs with these names.
LEGACY_SEED_NAMES = frozenset({"seed", "noise_seed"})


# --------------------------------------------------------------------------- errors

class HarnessError(Exception):
    """Base class for the harness's own errors."""


class WorkflowError(HarnessError):
    """A UI workflow cannot be converted (malformed, or unsupported feature)."""


class MissingNodeTypes(WorkflowError):
    """The workflow uses node types the server does not know (the UI's "missing nodes")."""

    def __init__(self, missing: dict[str, list[str]]):
        self.missing = missing  # type -> node ids
        items = ", ".join(f"{t} (node {', '.join(ids)})" for t, ids in sorted(missing.items()))
        super().__init__(f"node types unknown to the server: {items}")


class PromptRejected(HarnessError):
    """POST /prompt answered 400: the prompt failed validation before anything ran."""

    def __init__(self, status: int, body: dict):
        self.status = status
        self.body = body
        self.error = body.get("error", {}) if isinstance(body, dict) else {}
        self.node_errors = body.get("node_errors", {}) if isinstance(body, dict) else {}
        super().__init__(format_rejection(body))


class ExecutionFailed(HarnessError):
    """A queued prompt stopped with an `execution_error` (a node raised)."""

    def __init__(self, message: dict):
        self.message = message  # the execution_error payload from /history
        super().__init__(
            f"node {message.get('node_id')} ({message.get('node_type')}) raised "
            f"{message.get('exception_type')}: {message.get('exception_message', '').strip()}"
        )


class ServerDied(HarnessError):
    """The ComfyUI process exited or did not become ready."""


def format_rejection(body: Any) -> str:
    """One readable line per problem in a 400 answer of POST /prompt."""
    if not isinstance(body, dict):
        return f"prompt rejected: {body!r}"
    err = body.get("error", {})
    parts = [f"prompt rejected: {err.get('message', err)}" + (f" ({err['details']})" if err.get("details") else "")]
    for node_id, ne in (body.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            parts.append(f"  node {node_id} ({ne.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(parts)


# --------------------------------------------------------------------------- locating ComfyUI

CACHE_DIR = Path.home() / ".cache" / "interact_custom"  # where set-ups live (tests/setup_comfyui.sh)


def comfyui_version(comfy_dir: Path) -> tuple[int, ...]:
    """A checkout's version from its comfyui_version.py ((0,) when it does not say)."""
    try:
        text = (comfy_dir / "comfyui_version.py").read_text()
        number = text.split("__version__", 1)[1].split('"')[1]
        return tuple(int(p) for p in number.split("."))
    except (OSError, IndexError, ValueError):
        return (0,)


def cached_comfyuis() -> list[Path]:
    """The ComfyUI checkouts set up in the user cache (~/.cache/interact_custom/ComfyUI-*),
    newest version first."""
    found = [c.resolve() for c in CACHE_DIR.glob("ComfyUI-*") if (c / "main.py").is_file()]
    return sorted(found, key=comfyui_version, reverse=True)


def server_checkouts() -> list[Path]:
    """The checkouts the server suite runs against: $COMFYUI_DIR alone when set, else every
    set-up in the user cache (e.g. 0.33.0 and 0.3.64), newest first."""
    if os.environ.get("COMFYUI_DIR"):
        found = find_comfyui()
        return [found] if found else []
    return cached_comfyuis()


def checkout_id(comfy_dir: Path | None) -> str:
    """A test id for a checkout: its version (e.g. 'comfyui-0.33.0')."""
    if comfy_dir is None:
        return "no-comfyui"
    return "comfyui-" + ".".join(str(n) for n in comfyui_version(comfy_dir))


def find_comfyui() -> Path | None:
    """The ComfyUI checkout to test against: $COMFYUI_DIR, else the newest one in the user
    cache, else None."""
    env = os.environ.get("COMFYUI_DIR")
    if env:
        cand = Path(env).expanduser()
        return cand.resolve() if (cand / "main.py").is_file() else None
    cached = cached_comfyuis()
    return cached[0] if cached else None


def no_comfyui_reason() -> str | None:
    """Why there is no ComfyUI checkout at all (then the real-ComfyUI tests skip, also under
    CI: a fresh machine cannot fetch ComfyUI), or None when there is one."""
    if find_comfyui() is not None:
        return None
    where = os.environ.get("COMFYUI_DIR") or f"{CACHE_DIR}/ComfyUI-*"
    return (f"no ComfyUI checkout at {where}: the real-ComfyUI tests did NOT run (set COMFYUI_DIR, or "
            "set one up with tests/setup_comfyui.sh, see tests/README_comfyui.md)")


def find_comfyui_python(comfy_dir: Path) -> str:
    """ComfyUI's interpreter: $COMFYUI_PYTHON, else <checkout>/.venv/bin/python, else ours."""
    env = os.environ.get("COMFYUI_PYTHON")
    if env:
        return env
    venv_py = comfy_dir / ".venv" / "bin" / "python"
    return str(venv_py) if venv_py.exists() else sys.executable


def comfyui_unavailable_reason() -> str | None:
    """Why a real server cannot be started here (for a visible pytest skip), or None."""
    comfy = find_comfyui()
    if comfy is None:
        return no_comfyui_reason()
    py = find_comfyui_python(comfy)
    probe = "import importlib.util as u, sys; sys.exit([m for m in ('torch', 'aiohttp', 'yaml') if u.find_spec(m) is None] != [])"
    try:
        ok = subprocess.run([py, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ComfyUI's python {py} cannot run: {e}"
    if not ok:
        return (f"ComfyUI's python {py} lacks torch/aiohttp/yaml (set COMFYUI_PYTHON, or run "
                "tests/setup_comfyui.sh to make <checkout>/.venv)")
    return None


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- results

@dataclass
class RunResult:
    """What /history says about one finished prompt."""

    prompt_id: str
    status: str  # "success" or "error" (an interrupt is an "error" with execution_interrupted)
    messages: list  # [[event, payload], ...]: execution_start/cached/success/error/interrupted
    outputs: dict  # node id -> UI output ({"images": [{filename, subfolder, type}]} ...)
    elapsed_s: float

    def message(self, event: str) -> dict | None:
        """Payload of the first message of this kind, or None."""
        return next((m[1] for m in self.messages if m[0] == event), None)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def error(self) -> dict | None:
        """The execution_error payload (node_id, exception_type, exception_message, ...)."""
        return self.message("execution_error")

    @property
    def interrupted(self) -> bool:
        return self.message("execution_interrupted") is not None

    @property
    def cached_nodes(self) -> set[str]:
        """Ids of nodes whose outputs came from the cache (not executed)."""
        return set((self.message("execution_cached") or {}).get("nodes", []))

    def images(self, node_id: str | None = None) -> list[dict]:
        """Image references ({filename, subfolder, type}) of one output node, or of all."""
        outs = [self.outputs.get(str(node_id), {})] if node_id is not None else self.outputs.values()
        return [img for o in outs for img in o.get("images", [])]

    def raise_for_error(self) -> "RunResult":
        """Raise ExecutionFailed / HarnessError unless the prompt succeeded."""
        if self.error:
            raise ExecutionFailed(self.error)
        if not self.ok:
            raise HarnessError(f"prompt {self.prompt_id} ended with status {self.status!r}: {self.messages}")
        return self


# --------------------------------------------------------------------------- server

DEFAULT_USER_SETTINGS = {
    # A fresh user otherwise gets the "Get Started with a Template" dialog over the canvas.
    "Comfy.TutorialCompleted": True,
}


class ComfyServer:
    """A ComfyUI server subprocess on a free loopback port, loading this repository as a
    custom-node package, with private input/output/user/temp folders under `workdir`.

    Use as a context manager, or call start() / stop(). `extra_model_paths` maps ComfyUI
    model folder names (e.g. "checkpoints", or a folder our nodes register) to paths; they
    go into the --extra-model-paths-config YAML next to `custom_nodes`.
    """

    def __init__(self, comfy_dir: Path | str | None = None, python: str | None = None, *,
                 workdir: Path | str | None = None, package_dir: Path | str = REPO,
                 extra_model_paths: dict[str, str | Iterable[str]] | None = None,
                 extra_args: Iterable[str] = (), user_settings: dict | None = None):
        comfy = Path(comfy_dir) if comfy_dir else find_comfyui()
        if comfy is None or not (comfy / "main.py").is_file():
            raise HarnessError(comfyui_unavailable_reason() or f"no ComfyUI checkout at {comfy_dir}")
        self.comfy_dir = comfy.resolve()
        self.python = python or find_comfyui_python(self.comfy_dir)
        self.package_dir = Path(package_dir).resolve()
        self.extra_model_paths = dict(extra_model_paths or {})
        self.extra_args = list(extra_args)
        self.user_settings = {**DEFAULT_USER_SETTINGS, **(user_settings or {})}
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="comfy_test_"))
        self.input_dir = self.workdir / "input"
        self.output_dir = self.workdir / "output"
        self.temp_dir = self.workdir / "temp"
        self.user_dir = self.workdir / "user"
        self.log_path = self.workdir / "server.log"
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._object_info: dict | None = None
        self.client_id = uuid.uuid4().hex
        self.startup_s: float | None = None

    # ---- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def custom_nodes_dir(self) -> Path:
        """The folder given to ComfyUI as `custom_nodes`: the repo's parent if the repo is
        its only entry, else a private folder with a link named PACKAGE_LINK_NAME."""
        parent = self.package_dir.parent
        others = [p for p in parent.iterdir() if p.name != self.package_dir.name and not p.name.startswith(".")]
        if not others:
            return parent
        link_dir = self.workdir / "custom_nodes"
        link_dir.mkdir(parents=True, exist_ok=True)
        link = link_dir / PACKAGE_LINK_NAME
        if not link.is_symlink():
            link.symlink_to(self.package_dir, target_is_directory=True)
        return link_dir

    @property
    def banks_dir(self) -> Path:
        """The private folder `server_for_tests` registers as `interact_custom_banks`: its
        sub-folders (each with a bank.json) are the mask banks the IAMG-R node offers."""
        return self.workdir / BANK_FOLDER

    @property
    def package_path(self) -> Path:
        """Path under which ComfyUI imports the package (for log lookups)."""
        cn = self.custom_nodes_dir()
        return cn / (self.package_dir.name if cn == self.package_dir.parent else PACKAGE_LINK_NAME)

    def _write_model_paths_yaml(self) -> Path:
        # A minimal YAML writer (no PyYAML in the test venv): folder names are plain words;
        # paths are written as JSON strings, which YAML reads as double-quoted scalars.
        lines = ["interact_custom_tests:", f"  custom_nodes: {json.dumps(str(self.custom_nodes_dir()))}"]
        for name, paths in self.extra_model_paths.items():
            paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
            paths = [str(p).replace("{workdir}", str(self.workdir)) for p in paths]
            if len(paths) == 1:
                lines.append(f"  {name}: {json.dumps(str(paths[0]))}")
            else:  # ComfyUI splits a block scalar on newlines into several folders
                lines.append(f"  {name}: |")
                lines += [f"    {p}" for p in paths]
        path = self.workdir / "extra_model_paths.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _supported(self, flag: str) -> bool:
        try:
            return flag in (self.comfy_dir / "comfy" / "cli_args.py").read_text()
        except OSError:
            return False

    def command(self) -> list[str]:
        """The server command line (without the port)."""
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1",
               "--output-directory", str(self.output_dir),
               "--input-directory", str(self.input_dir),
               "--extra-model-paths-config", str(self._write_model_paths_yaml()),
               "--disable-auto-launch"]
        # Private state, so that tests neither see nor change the checkout's user data.
        optional = {"--temp-directory": str(self.temp_dir), "--user-directory": str(self.user_dir),
                    "--database-url": "sqlite:///:memory:"}
        for flag, value in optional.items():
            if self._supported(flag):
                cmd += [flag, value]
        # Another front end than the checkout's own (e.g. PyPI's newest comfyui-frontend-package):
        # $COMFYUI_FRONT_END_ROOT = its static folder.
        if os.environ.get("COMFYUI_FRONT_END_ROOT"):
            cmd += ["--front-end-root", os.environ["COMFYUI_FRONT_END_ROOT"]]
        return cmd + self.extra_args

    def start(self, timeout: float = 240.0) -> "ComfyServer":
        """Start the server and wait for GET /system_stats (ComfyUI needs ~6-15 s on CPU)."""
        for d in (self.input_dir, self.output_dir, self.temp_dir, self.user_dir / "default"):
            d.mkdir(parents=True, exist_ok=True)
        settings = self.user_dir / "default" / "comfy.settings.json"
        if not settings.exists():
            settings.write_text(json.dumps(self.user_settings))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)  # the test venv's paths must not shadow ComfyUI's packages
        t0 = time.monotonic()
        for attempt in range(3):  # the free port may be taken between probing and binding
            self.port = free_port()
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(self.command() + ["--port", str(self.port)], cwd=self.comfy_dir,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
            log.close()
            if self._wait_ready(t0 + timeout):
                self.startup_s = time.monotonic() - t0
                return self
            if "address already in use" not in self.log_text().lower() or attempt == 2:
                break
        self.stop()
        raise ServerDied(f"ComfyUI did not start within {timeout:.0f} s; log tail:\n{self.log_tail()}")

    def _wait_ready(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                self.get_json("/system_stats", timeout=5)
                return True
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.25)
        return False

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM to its own process group, then SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)  # start_new_session=True: the group is the server's own
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue

    def cleanup(self) -> None:
        """stop() and remove the private folders (only if this object made them)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---- log

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def package_import_error(self) -> str | None:
        """ComfyUI's import traceback for this package, or None if it imported cleanly."""
        log = self.log_text()
        pkg = str(self.package_path)
        failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and pkg in line]
        marker = f"Cannot import {pkg} module for custom nodes:"
        if marker in log:
            start = log.rfind("Traceback", 0, log.index(marker))
            end = log.find("\n", log.index(marker))
            return log[start if start >= 0 else log.index(marker): end if end >= 0 else None]
        return "\n".join(failed) or None

    # ---- HTTP

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 30.0):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        return urllib.request.urlopen(req, timeout=timeout)

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        with self._request("GET", path, timeout=timeout) as r:
            return json.load(r)

    def post_json(self, path: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
        """POST JSON; returns (status, parsed body) for 2xx and 4xx answers alike."""
        try:
            with self._request("POST", path, body, timeout) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def object_info(self, refresh: bool = False) -> dict:
        """GET /object_info (all node definitions), cached."""
        if self._object_info is None or refresh:
            self._object_info = self.get_json("/object_info", timeout=120)
        return self._object_info

    def package_node_types(self) -> list[str]:
        """Node types the server loaded from this package (by their python_module)."""
        names = {f"custom_nodes.{self.package_path.name}", f"custom_nodes.{self.package_dir.name}"}
        return sorted(k for k, v in self.object_info().items()
                      if v.get("python_module") in names or str(v.get("python_module", "")).startswith(tuple(n + "." for n in names)))

    # ---- prompts

    def queue(self, prompt: dict, *, workflow: dict | None = None, extra_data: dict | None = None) -> str:
        """POST /prompt; returns the prompt_id. Raises PromptRejected on a 400 answer.

        `workflow` (UI format) is attached as extra_pnginfo like the front end does, so
        saved PNGs embed it."""
        extra = dict(extra_data or {})
        if workflow is not None:
            extra.setdefault("extra_pnginfo", {"workflow": workflow})
        status, body = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id, "extra_data": extra})
        if status != 200:
            raise PromptRejected(status, body if isinstance(body, dict) else {"error": {"message": body}})
        if body.get("node_errors"):  # accepted, but some outputs were dropped as invalid
            raise PromptRejected(status, body)
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0, poll_s: float = 0.2) -> RunResult:
        """Wait until /history has the finished prompt. On timeout the prompt is
        interrupted and TimeoutError names it, with the server log tail."""
        t0 = time.monotonic()
        while True:
            hist = self.get_json(f"/history/{prompt_id}")
            entry = hist.get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                st = entry["status"]
                return RunResult(prompt_id, st["status_str"], st.get("messages", []), entry.get("outputs", {}),
                                 time.monotonic() - t0)
            if not self.alive:
                raise ServerDied(f"server exited while running {prompt_id}; log tail:\n{self.log_tail()}")
            if time.monotonic() - t0 > timeout:
                self.interrupt(prompt_id)
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f} s; log tail:\n{self.log_tail()}")
            time.sleep(poll_s)

    def run(self, prompt: dict, timeout: float = 300.0, **queue_kw) -> RunResult:
        """queue() then wait()."""
        return self.wait(self.queue(prompt, **queue_kw), timeout)

    def run_workflow(self, workflow: dict, timeout: float = 300.0) -> RunResult:
        """Convert a UI workflow (as the front end would), queue it, wait for it."""
        return self.run(workflow_to_prompt(workflow, self.object_info()), timeout, workflow=workflow)

    def is_running(self, prompt_id: str) -> bool:
        """Whether the prompt is the one executing now (GET /queue)."""
        return any(item[1] == prompt_id for item in self.get_json("/queue").get("queue_running", []))

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt: stop the running prompt (only if it is `prompt_id`, when given)."""
        self.post_json("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def fetch(self, ref: dict) -> bytes:
        """Bytes of an output file through GET /view ({filename, subfolder, type})."""
        q = urllib.parse.urlencode({k: ref.get(k, "") for k in ("filename", "subfolder", "type")})
        with self._request("GET", f"/view?{q}", timeout=60) as r:
            return r.read()

    def output_file(self, ref: dict) -> Path:
        """Where an output image was written on disk (type "output" or "temp")."""
        # ComfyUI writes temp files to <--temp-directory>/temp
        base = self.output_dir if ref.get("type", "output") == "output" else self.temp_dir / "temp"
        return base / ref.get("subfolder", "") / ref["filename"]

    def upload(self, name: str, data: bytes, *, subfolder: str = "", kind: str = "input") -> dict:
        """POST /upload/image as the front end's upload button does (multipart/form-data):
        any bytes, stored as `name` in the server's `kind` folder ("input", "temp" or
        "output"), under `subfolder`. Returns the server's answer ({name, subfolder, type})."""
        boundary = uuid.uuid4().hex
        fields = {"type": kind, "subfolder": subfolder, "overwrite": "true"}
        body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                        for k, v in fields.items())
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode()
        body += data + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(self.url + "/upload/image", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)

    def add_inputs(self, files: Iterable[Path | str]) -> None:
        """Copy files into the server's input folder (what LoadImage lists)."""
        for f in files:
            shutil.copy2(f, self.input_dir / Path(f).name)


_shared: dict[str, ComfyServer] = {}


def shared_server(comfy_dir: Path | None = None, **kwargs) -> ComfyServer:
    """One server per checkout and test session, shared by the test modules that ask for it
    (starting ComfyUI costs ~10 s). Stopped at interpreter exit. kwargs apply on first start
    only. Starting one checkout's server stops the other's (one at a time on a small machine)."""
    key = str(comfy_dir or find_comfyui())
    srv = _shared.get(key)
    if srv is None or not srv.alive:
        for other in [k for k in _shared if k != key]:
            _shared.pop(other).cleanup()
        srv = ComfyServer(comfy_dir, **kwargs).start()
        _shared[key] = srv
        atexit.register(srv.cleanup)
    return srv


# --------------------------------------------------------------------------- conversion

def _spec_options(spec: Any) -> dict:
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}


def _spec_type(spec: Any) -> str:
    t = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return "COMBO" if isinstance(t, list) else str(t)


def is_widget_input(spec: Any) -> bool:
    """Whether the front end shows this input as a widget (vs. a link-only socket)."""
    opts = _spec_options(spec)
    return _spec_type(spec) in WIDGET_TYPES and not opts.get("forceInput") and not opts.get("rawLink")


def has_control_widget(name: str, spec: Any) -> bool:
    """Whether the front end adds the hidden control_after_generate widget after it."""
    opts = _spec_options(spec)
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return _spec_type(spec) == "INT" and name in LEGACY_SEED_NAMES


@dataclass(frozen=True)
class WidgetSlot:
    """One entry of a node's widgets_values: a real input, or a UI-only value."""

    name: str  # input name; for UI-only slots the widget's name
    kind: str  # "value", "control" (control_after_generate) or "upload" (button)


def input_order(node_def: dict) -> list[tuple[str, str]]:
    """(section, name) of a node's inputs in declaration order: required, then optional."""
    order = node_def.get("input_order") or {s: list(node_def["input"].get(s, {})) for s in ("required", "optional")}
    return [(s, n) for s in ("required", "optional") for n in order.get(s, [])]


def widget_slots(node_def: dict) -> list[WidgetSlot]:
    """The layout of widgets_values for a node type, as the current front end saves it:
    widget inputs in declaration order, each seed-like one followed by its control value,
    and an upload button's value after the required widgets."""
    slots: list[WidgetSlot] = []
    order = input_order(node_def)
    for section in ("required", "optional"):
        uploads = []
        for name in (n for s, n in order if s == section):
            spec = node_def["input"][section][name]
            if not is_widget_input(spec):
                continue
            slots.append(WidgetSlot(name, "value"))
            if has_control_widget(name, spec):
                slots.append(WidgetSlot("control_after_generate", "control"))
            if any(_spec_options(spec).get(k) for k in UPLOAD_OPTIONS):
                uploads.append(WidgetSlot("upload", "upload"))
        slots += uploads
    return slots


def widget_values(node: dict, node_def: dict, *, strict: bool = True) -> dict[str, Any]:
    """Map a UI node's widgets_values to {input name: value} (UI-only values dropped).

    strict: the number of values must match the node definition (the current front end,
    or one without the upload/control values). Otherwise values are assigned in order
    and missing trailing ones take the input's default, like the front end does."""
    values = node.get("widgets_values")
    if values is None:
        values = []
    if isinstance(values, dict):  # some packs save widgets by name
        return dict(values)
    slots = widget_slots(node_def)
    variants = [slots,
                [s for s in slots if s.kind != "upload"],
                [s for s in slots if s.kind != "control"],
                [s for s in slots if s.kind == "value"]]
    chosen = next((v for v in variants if len(v) == len(values)), None)
    if chosen is None:
        if strict:
            raise WorkflowError(
                f"node {node.get('id')} ({node.get('type')}): widgets_values has {len(values)} values "
                f"{values!r}, expected {len(slots)} for widgets {[s.name for s in slots]}")
        chosen = slots
    out: dict[str, Any] = {}
    for slot, value in zip(chosen, values):
        if slot.kind == "value":
            out[slot.name] = value
        elif slot.kind == "control" and strict and value not in CONTROL_VALUES:
            raise WorkflowError(f"node {node.get('id')} ({node.get('type')}): {value!r} stands where the "
                                f"control_after_generate value (one of {sorted(CONTROL_VALUES)}) belongs")
    if not strict:
        defaults = {n: _spec_options(node_def["input"][s][n]).get("default") for s, n in input_order(node_def)}
        for slot in chosen[len(values):]:
            if slot.kind == "value" and defaults.get(slot.name) is not None:
                out[slot.name] = defaults[slot.name]
    return out


def _links_by_id(workflow: dict) -> dict[int, tuple]:
    """link id -> (src node, src slot, dst node, dst slot, type); both saved layouts."""
    out = {}
    for link in workflow.get("links", []) or []:
        if isinstance(link, dict):
            out[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], link.get("type"))
        else:
            out[link[0]] = tuple(link[1:6])
    return out


def _types_compatible(a: Any, b: Any) -> bool:
    """LiteGraph's connection rule: "*" or empty matches anything; else shared type names."""
    if not a or not b or a == "*" or b == "*":
        return True
    sa = {t.strip().lower() for t in str(a).split(",")}
    sb = {t.strip().lower() for t in str(b).split(",")}
    return bool(sa & sb)


def workflow_to_prompt(workflow: dict, object_info: dict, *, strict: bool = True) -> dict:
    """Convert a UI-format workflow (what a user saves / drags in) to the API prompt that
    the front end posts on "Queue": {id: {class_type, inputs, _meta}}.

    Handles: widget values by declaration order (required then optional) with the hidden
    control_after_generate / upload values skipped; widget inputs converted to linked
    inputs; PrimitiveNode values; Reroute chains; Note nodes; muted nodes (dropped, links
    from them dropped) and bypassed nodes (each output passes through the matching input).
    Raises MissingNodeTypes for node types the server lacks, WorkflowError for subgraphs /
    group nodes and malformed widget values."""
    if "nodes" not in workflow:
        raise WorkflowError("not a UI workflow (no 'nodes'); API prompts need no conversion")
    if (workflow.get("definitions") or {}).get("subgraphs") or (workflow.get("extra") or {}).get("groupNodes"):
        raise WorkflowError("subgraphs / group nodes are not supported by this converter")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = _links_by_id(workflow)

    missing: dict[str, list[str]] = {}
    for n in nodes.values():
        if n["type"] not in FRONTEND_ONLY_NODES and n["type"] not in object_info:
            missing.setdefault(n["type"], []).append(str(n["id"]))
    if missing:
        raise MissingNodeTypes(missing)

    def resolve(link_id: int | None, seen: frozenset = frozenset()):
        """Follow a link upstream: ("link", [id, slot]), ("value", v) or None (no input)."""
        if link_id is None or link_id not in links or link_id in seen:
            return None
        src_id, src_slot = links[link_id][0], links[link_id][1]
        src = nodes.get(src_id)
        if src is None:
            return None
        seen = seen | {link_id}
        if src["type"] == PRIMITIVE_NODE:
            vals = src.get("widgets_values") or []
            return ("value", vals[0]) if vals else None
        if src["type"] == REROUTE_NODE:
            ins = src.get("inputs") or []
            return resolve(ins[0].get("link"), seen) if ins else None
        mode = src.get("mode", MODE_ALWAYS)
        if mode == MODE_NEVER:
            return None
        if mode == MODE_BYPASS:
            outs = src.get("outputs") or []
            out_type = outs[src_slot].get("type") if src_slot < len(outs) else None
            ins = src.get("inputs") or []
            # Like the front end: the input at the same index if its type fits, else the
            # first input whose type fits.
            same = ins[src_slot] if src_slot < len(ins) else None
            if same is not None and _types_compatible(same.get("type"), out_type):
                pick = same
            else:
                pick = next((i for i in ins if _types_compatible(i.get("type"), out_type)), None)
            return resolve(pick.get("link"), seen) if pick else None
        return ("link", [str(src_id), src_slot])

    prompt: dict[str, dict] = {}
    for nid, n in nodes.items():
        if n["type"] in FRONTEND_ONLY_NODES or n.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
            continue
        node_def = object_info[n["type"]]
        inputs: dict[str, Any] = widget_values(n, node_def, strict=strict)
        declared = {name for _, name in input_order(node_def)}
        for inp in n.get("inputs") or []:
            name = inp.get("name")
            if name not in declared:
                continue  # UI-only sockets (e.g. the upload button's)
            if inp.get("link") is None:
                continue  # unlinked widget input keeps its widget value; socket stays empty
            res = resolve(inp["link"])
            if res is None:
                inputs.pop(name, None)
            else:
                inputs[name] = res[1]
        prompt[str(nid)] = {"inputs": inputs, "class_type": n["type"],
                            "_meta": {"title": n.get("title") or node_def.get("display_name") or n["type"]}}
    return prompt


def workflow_input_files(workflow: dict, object_info: dict) -> dict[str, str]:
    """Files a workflow loads from ComfyUI's input folder: {file name: node id}, read from
    widgets with an upload button (LoadImage, LoadImageMask, ...). Muted nodes skipped."""
    files = {}
    for n in workflow.get("nodes", []):
        node_def = object_info.get(n["type"])
        if node_def is None or n.get("mode", MODE_ALWAYS) == MODE_NEVER:
            continue
        vals = widget_values(n, node_def, strict=False)
        for section, name in input_order(node_def):
            spec = node_def["input"][section][name]
            if any(_spec_options(spec).get(k) for k in UPLOAD_OPTIONS) and isinstance(vals.get(name), str):
                # The UI may annotate a file with its folder, e.g. "x.png [input]".
                files[vals[name].split(" [")[0]] = str(n["id"])
    return files


def copy_workflow_inputs(workflow: dict, object_info: dict, search_dirs: Iterable[Path], input_dir: Path) -> list[Path]:
    """Copy the input files a workflow needs (see workflow_input_files) from the first
    search folder (searched recursively) that has them into the server's input folder."""
    copied = []
    search_dirs = [Path(d) for d in search_dirs if Path(d).is_dir()]
    for fname, node_id in workflow_input_files(workflow, object_info).items():
        target = input_dir / fname
        if target.exists():
            continue
        found = next((p for d in search_dirs for p in [d / fname, *d.rglob(Path(fname).name)] if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"node {node_id} loads input file {fname!r}, not found under "
                                    f"{[str(d) for d in search_dirs]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(found, target)
        copied.append(target)
    return copied


# --------------------------------------------------------------------------- building workflows

class WorkflowBuilder:
    """Build a UI-format workflow (version 0.4) laid out as the front end saves it, from
    the server's node definitions: sockets first, then widget inputs (with "widget"),
    widgets_values with the UI-only control/upload values in place.

        b = WorkflowBuilder(server.object_info())
        img = b.add("LoadImage", {"image": "x.png"})
        inv = b.add("ImageInvert")
        b.connect(img, 0, inv, "image")
        wf = b.build()
    """

    def __init__(self, object_info: dict):
        self.object_info = object_info
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def _node(self, node_id: int | str) -> dict:
        return next(n for n in self.nodes if n["id"] == int(node_id))

    def _new(self, type_: str, **fields) -> dict:
        node = {"id": len(self.nodes) + 1, "type": type_, "pos": [40 + 320 * (len(self.nodes) % 4), 60 + 260 * (len(self.nodes) // 4)],
                "size": [300, 120], "flags": {}, "order": len(self.nodes), "mode": MODE_ALWAYS,
                "inputs": [], "outputs": [], "properties": {}, **fields}
        self.nodes.append(node)
        return node

    def add(self, type_: str, widgets: dict[str, Any] | None = None, *, mode: int = MODE_ALWAYS,
            title: str | None = None, control: str = "fixed") -> int:
        """Add a server node; `widgets` = {input name: value} (others take their defaults),
        `control` = the value of any control_after_generate widget."""
        widgets = widgets or {}
        node_def = self.object_info[type_]
        unknown = set(widgets) - {name for _, name in input_order(node_def)}
        if unknown:
            raise WorkflowError(f"{type_} has no inputs {sorted(unknown)}")
        sockets, widget_inputs, values = [], [], []
        for section, name in input_order(node_def):
            spec = node_def["input"][section][name]
            entry = {"name": name, "type": _spec_type(spec), "link": None}
            if is_widget_input(spec):
                widget_inputs.append({**entry, "widget": {"name": name}})
            else:
                sockets.append(entry)
        for slot in widget_slots(node_def):
            if slot.kind == "control":
                values.append(control)
            elif slot.kind == "upload":
                values.append("image")
            else:
                section = next(s for s, n in input_order(node_def) if n == slot.name)
                spec = node_def["input"][section][slot.name]
                default = _spec_options(spec).get("default")
                if default is None and _spec_type(spec) == "COMBO" and isinstance(spec[0], list) and spec[0]:
                    default = spec[0][0]
                values.append(widgets.get(slot.name, default))
        outputs = [{"name": nm, "type": t, "links": [], "slot_index": i}
                   for i, (t, nm) in enumerate(zip(node_def["output"], node_def.get("output_name", node_def["output"])))]
        node = self._new(type_, mode=mode, inputs=sockets + widget_inputs, outputs=outputs,
                         widgets_values=values, properties={"Node name for S&R": type_})
        if title:
            node["title"] = title
        return node["id"]

    def add_primitive(self, value: Any, type_: str, *, control: str | None = "fixed") -> int:
        """A front-end PrimitiveNode; connect() it to a widget input to drive that widget."""
        values = [value] + ([control] if control is not None else [])
        node = self._new(PRIMITIVE_NODE, outputs=[{"name": "connect to widget input", "type": type_, "links": [], "slot_index": 0}],
                         widgets_values=values, properties={"Run widget replace on values": False})
        return node["id"]

    def add_reroute(self, type_: str) -> int:
        node = self._new(REROUTE_NODE, size=[75, 26], inputs=[{"name": "", "type": "*", "link": None}],
                         outputs=[{"name": "", "type": type_, "links": [], "slot_index": 0}],
                         properties={"showOutputText": False, "horizontal": False})
        return node["id"]

    def add_note(self, text: str) -> int:
        return self._new("Note", widgets_values=[text], properties={"text": ""})["id"]

    def connect(self, src: int, src_slot: int, dst: int, input_name: str | int) -> int:
        """Link output `src_slot` of `src` to the input named `input_name` (or index) of `dst`."""
        s, d = self._node(src), self._node(dst)
        idx = input_name if isinstance(input_name, int) else next(
            (i for i, inp in enumerate(d["inputs"]) if inp["name"] == input_name), None)
        if idx is None:
            raise WorkflowError(f"node {dst} ({d['type']}) has no input {input_name!r}")
        link_id = len(self.links) + 1
        out = s["outputs"][src_slot]
        inp = d["inputs"][idx]
        link_type = inp["type"] if s["type"] == PRIMITIVE_NODE else out["type"]
        if s["type"] == PRIMITIVE_NODE:  # a primitive takes the type/name of the widget it drives
            out.update(type=inp["type"], widget={"name": inp["name"]}, name=inp["type"])
            slots = widget_slots(self.object_info[d["type"]])
            vi = next((i for i, sl in enumerate(slots) if sl.kind == "value" and sl.name == inp["name"]), None)
            if vi is not None:  # the UI keeps the driven widget showing the primitive's value
                d["widgets_values"][vi] = s["widgets_values"][0]
        inp["link"] = link_id
        out["links"].append(link_id)
        self.links.append([link_id, s["id"], src_slot, d["id"], idx, link_type])
        return link_id

    def build(self) -> dict:
        return copy.deepcopy({
            "id": str(uuid.uuid4()), "revision": 0,
            "last_node_id": len(self.nodes), "last_link_id": len(self.links),
            "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4,
        })


# --------------------------------------------------------------------------- self-test workflow

def write_test_png(path: Path | str, width: int = 48, height: int = 40) -> Path:
    """Write an RGB PNG with a known, non-uniform pattern (see pattern_pixel)."""
    rows = b"".join(b"\x00" + bytes(c for x in range(width) for c in pattern_pixel(x, y))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)
    return Path(path)


def pattern_pixel(x: int, y: int) -> tuple[int, int, int]:
    """RGB of the test pattern at (x, y)."""
    return (x * 5) % 256, (y * 6) % 256, ((x + y) * 3) % 256



CORE_INPUT_IMAGE = "harness_pattern.png"


def core_nodes_workflow(object_info: dict, image: str = CORE_INPUT_IMAGE) -> tuple[dict, dict]:
    """A UI workflow of core nodes exercising each conversion rule, and its expectations.

    LoadImage -> ImageInvert -> [ImageBlur, bypassed] -> SaveImage "harness_invert"
    LoadImage -> Reroute -> ImageScale(width <- PrimitiveInt 24, height <- PrimitiveNode 20)
              -> SaveImage "harness_scaled"
    ImageInvert -> PreviewImage (muted);  a Note.
    Returns (workflow, expectations in the tests/comfy_workflows.json format)."""
    b = WorkflowBuilder(object_info)
    load = b.add("LoadImage", {"image": image})
    inv = b.add("ImageInvert")
    blur = b.add("ImageBlur", {"blur_radius": 5}, mode=MODE_BYPASS)  # bypassed: must not blur
    save = b.add("SaveImage", {"filename_prefix": "harness_invert"})
    b.connect(load, 0, inv, "image")
    b.connect(inv, 0, blur, "image")
    b.connect(blur, 0, save, "images")
    width = b.add("PrimitiveInt", {"value": 24})  # server node with a control_after_generate value
    height = b.add_primitive(20, "INT")  # front-end PrimitiveNode driving a widget input
    scale = b.add("ImageScale", {"upscale_method": "nearest-exact"})
    reroute = b.add_reroute("IMAGE")
    b.connect(load, 0, reroute, 0)
    b.connect(reroute, 0, scale, "image")
    b.connect(width, 0, scale, "width")
    b.connect(height, 0, scale, "height")
    save2 = b.add("SaveImage", {"filename_prefix": "harness_scaled"})
    b.connect(scale, 0, save2, "images")
    muted = b.add("PreviewImage", mode=MODE_NEVER)  # muted: must not run
    b.connect(inv, 0, muted, "images")
    b.add_note("Core-nodes workflow of tests/comfy_harness.py")
    expect = {"inputs": [image], "outputs": {str(save): {"count": 1, "size": [48, 40]},
                                             str(save2): {"count": 1, "size": [24, 20]}},
              "absent_outputs": [str(muted)]}
    return b.build(), expect


# --------------------------------------------------------------------------- expectations

EXPECTATIONS_FILE = Path(__file__).resolve().parent / "comfy_workflows.json"
WORKFLOW_DIRS = (REPO / "workflows",)


def workflow_files() -> list[Path]:
    """The UI workflows this package ships (workflows/*.json)."""
    return sorted(p for d in WORKFLOW_DIRS if d.is_dir() for p in d.glob("*.json"))


def load_expectations(path: Path = EXPECTATIONS_FILE) -> dict[str, dict]:
    """{workflow file name: expectations}; keys starting with "_" are comments."""
    if not path.is_file():
        return {}
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def expand_model_paths(expectations: dict[str, dict], vectors_dir: Path | None) -> dict[str, list[str]]:
    """Union of the "model_paths" of all workflows, {vectors}/{repo} substituted; entries
    needing test vectors are left out when there are none (their workflows then fail,
    naming the missing folder)."""
    out: dict[str, list[str]] = {}
    for exp in expectations.values():
        for folder, paths in (exp.get("model_paths") or {}).items():
            for p in [paths] if isinstance(paths, str) else paths:
                if "{vectors}" in p and vectors_dir is None:
                    continue
                p = p.replace("{vectors}", str(vectors_dir)).replace("{repo}", str(REPO))
                out.setdefault(folder, []).append(p)
    return out


def image_is_blank(img) -> bool:
    """True for a (nearly) constant image: every channel spans at most 2 levels."""
    return all(hi - lo <= 2 for lo, hi in img.convert("RGB").getextrema())


def check_outputs(server: ComfyServer, result: RunResult, expect: dict) -> dict[str, list]:
    """Check a finished run against its expectations and return the decoded images
    {node id: [PIL.Image]}. `expect["outputs"]`: {node id: {"count": n, "size": [w, h],
    "allow_blank": false}}; every image must exist on disk, come back through /view,
    have the size and not be blank. `expect["absent_outputs"]`: node ids with no output."""
    import io

    from PIL import Image

    result.raise_for_error()
    problems, images = [], {}
    for node_id, want in (expect.get("outputs") or {}).items():
        refs = result.images(node_id)
        if len(refs) != want.get("count", len(refs) or 1):
            problems.append(f"node {node_id}: {len(refs)} images, expected {want.get('count', '>= 1')}")
        for ref in refs:
            if not server.output_file(ref).is_file():
                problems.append(f"node {node_id}: {server.output_file(ref)} not on disk")
            img = Image.open(io.BytesIO(server.fetch(ref)))
            img.load()
            images.setdefault(node_id, []).append(img)
            if want.get("size") and list(img.size) != list(want["size"]):
                problems.append(f"node {node_id}: {ref['filename']} is {img.size[0]}x{img.size[1]}, "
                                f"expected {want['size'][0]}x{want['size'][1]}")
            if not want.get("allow_blank") and image_is_blank(img):
                problems.append(f"node {node_id}: {ref['filename']} is blank (constant colour)")
    for node_id in expect.get("absent_outputs") or []:
        if result.outputs.get(str(node_id)):
            problems.append(f"node {node_id} produced output but should not have run")
    if problems:
        raise AssertionError(f"prompt {result.prompt_id}:\n  " + "\n  ".join(problems))
    return images


def server_for_tests(vectors_dir: Path | None = None, comfy_dir: Path | None = None) -> ComfyServer:
    """The session's shared server (of `comfy_dir`, default the newest checkout), set up for
    the workflow tests: model folders from tests/comfy_workflows.json, and the core
    workflow's input image in place."""
    model_paths = expand_model_paths(load_expectations(), vectors_dir)
    model_paths.setdefault(BANK_FOLDER, []).append("{workdir}/" + BANK_FOLDER)  # ComfyServer.banks_dir
    srv = shared_server(comfy_dir, extra_model_paths=model_paths)
    if not (srv.input_dir / CORE_INPUT_IMAGE).exists():
        write_test_png(srv.input_dir / CORE_INPUT_IMAGE)
    return srv


def required_here() -> bool:
    """True under CI (``CI`` set to 1/true/yes): there the real-server and browser tests
    must run, so what they need missing is a failure, not a skip (.ci/run sets it all up)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip the test saying why, or fail it under CI (see `required_here`)."""
    import pytest

    if required_here():
        pytest.fail(f"{reason} [CI=true: this test must run here; .ci/run sets ComfyUI and Chromium up]",
                    pytrace=False)
    pytest.skip(reason)


def skip_without_comfyui() -> None:
    """Skip (also under CI) when no ComfyUI checkout exists on this machine."""
    import pytest

    reason = no_comfyui_reason()
    if reason:
        pytest.skip(reason)


def server_fixture(request) -> ComfyServer:
    """Body of the test modules' `server` fixtures: skip without any ComfyUI checkout (a
    failure under CI when one exists but cannot run), else the shared server of the checkout
    the fixture is parametrized with (`request.param`, default the newest), with the test
    vectors' folder when the `vectors` fixture has one."""
    import pytest

    skip_without_comfyui()
    comfy_dir = getattr(request, "param", None)
    reason = comfyui_unavailable_reason()
    if reason:
        unavailable(reason)
    try:
        vectors_dir = request.getfixturevalue("vectors").path
    except pytest.skip.Exception:
        vectors_dir = None  # workflows needing test vectors then fail, naming the folder
    return server_for_tests(vectors_dir, comfy_dir)


def prepare_shipped_workflow(path: Path, server: ComfyServer) -> tuple[dict, dict]:
    """(workflow, expectations) of a shipped workflow file, its input files copied into
    the server's input folder (from the workflow's folder, its inputs/, or pipelines/assets/)."""
    expect = load_expectations().get(path.name)
    if expect is None:
        raise AssertionError(f"no expectations for {path.name}: add its output node ids and image sizes "
                             f"to tests/{EXPECTATIONS_FILE.name} (format in its _doc)")
    workflow = json.loads(path.read_text())
    copy_workflow_inputs(workflow, server.object_info(), [path.parent, path.parent / "inputs", REPO / "pipelines" / "assets"],
                         server.input_dir)
    return workflow, expect
