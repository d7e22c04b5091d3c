"""The package's import direction, checked on the source. The runtime a ComfyUI user runs:
`nodes/` → `weights_manager/` → `pipelines/`; the research tooling `cli/research/` sits
above `weights_manager/`, and the commands (the rest of `cli/`) above it. The runtime
never imports `cli/`; only `nodes/comfy_bridge.py` touches ComfyUI."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("pipelines", "weights_manager", "cli/research", "cli", "nodes")
# What each layer may import from the package (besides itself).
ALLOWED = {"pipelines": set(), "weights_manager": {"pipelines"},
           "cli/research": {"pipelines", "weights_manager"},
           "cli": {"pipelines", "weights_manager", "cli/research"},
           "nodes": {"pipelines", "weights_manager"}}


def _layer(parts) -> str | None:
    """The layer a module (its path parts inside the package) belongs to."""
    if parts[:2] == ["cli", "research"]:
        return "cli/research"
    return parts[0] if parts and parts[0] in LAYERS else None
COMFY_MODULES = ("comfy", "folder_paths", "server", "execution", "comfy_extras")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module inside the package or the external top-level name) of every import."""
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                if node.module:
                    out.append((node.lineno, "." + ".".join([*base, node.module])))
                else:  # `from .. import weights_manager`: each name is a module of the package
                    out.extend((node.lineno, "." + ".".join([*base, alias.name])) for alias in node.names)
            else:
                out.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
    return out


def _sources(layer: str) -> list[Path]:
    return sorted(p for p in (ROOT / layer).rglob("*.py") if _layer(list(p.relative_to(ROOT).parts)) == layer)


def _wrong_imports(layer: str) -> list[str]:
    wrong = []
    for path in _sources(layer):
        for line, module in _imports(path):
            if not module.startswith("."):
                continue
            top = _layer(module[1:].split("."))
            if top is not None and top != layer and top not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module[1:]}")
    return wrong


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_go_one_way(layer):
    wrong = _wrong_imports(layer)
    assert not wrong, f"{layer}/ must not import " + ", ".join(sorted(set(LAYERS) - ALLOWED[layer] - {layer})) + \
        ":\n" + "\n".join(wrong)


def test_the_runtime_importing_the_tooling_is_caught(tmp_path, monkeypatch):
    # A control: a weight module or a node reaching into cli/research must be reported.
    for rel, source in (("weights_manager/x.py", "from ..cli.research import official_export\n"),
                        ("nodes/y.py", "from ..cli.research.training import loop\n"),
                        ("cli/research/z.py", "from .. import demo\n")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(source)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert _wrong_imports("weights_manager") == ["weights_manager/x.py:1 imports cli.research"]
    assert _wrong_imports("nodes") == ["nodes/y.py:1 imports cli.research.training"]
    assert _wrong_imports("cli/research") == ["cli/research/z.py:1 imports cli.demo"]


def test_only_the_bridge_touches_comfyui():
    touching = []
    for layer in LAYERS:
        for path in _sources(layer):
            for line, module in _imports(path):
                if module.split(".")[0] in COMFY_MODULES:
                    touching.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert all(t.startswith("nodes/comfy_bridge.py:") for t in touching), "\n".join(touching)
    assert touching, "the checker found no ComfyUI import at all (it no longer parses the bridge?)"


def test_the_checker_sees_relative_imports(tmp_path, monkeypatch):
    # A control: the checker must resolve the relative imports it is there to police.
    found = {m for _, m in _imports(ROOT / "weights_manager" / "official_mgig.py")}
    assert any(m.startswith(".pipelines") for m in found), found
    # ... including the spelling that names no module, `from .. import X`.
    planted = tmp_path / "pipelines" / "iamg" / "x.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from .. import samplers\nfrom ... import weights_manager\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)  # _imports reads paths relative to ROOT
    assert [m for _, m in _imports(planted)] == [".pipelines.samplers", ".weights_manager"]


def test_every_package_folder_is_installed():
    # pyproject lists the packages explicitly (the root is the package): a new folder left
    # out would be missing from a pip install, though the tests (editable) would not see it.
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"interact_custom"} | {
        "interact_custom." + ".".join(p.parent.relative_to(ROOT).parts)
        for layer in LAYERS for p in (ROOT / layer).rglob("__init__.py")}
    assert folders <= listed, f"add to [tool.setuptools] packages: {sorted(folders - listed)}"
