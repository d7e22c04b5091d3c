"""The package's import direction, checked on the source: `nodes/` and `cli/` may import
everything, `weights_manager/` imports `pipelines/`, and `pipelines/` imports neither of
the others; only `nodes/comfy_bridge.py` touches ComfyUI."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("pipelines", "weights_manager", "cli", "nodes")
# What each layer may import from the package (besides itself).
ALLOWED = {"pipelines": set(), "weights_manager": {"pipelines"}, "cli": {"pipelines", "weights_manager"},
           "nodes": {"pipelines", "weights_manager"}}
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
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_go_one_way(layer):
    wrong = []
    for path in _sources(layer):
        for line, module in _imports(path):
            if not module.startswith("."):
                continue
            top = module[1:].split(".")[0]
            if top in LAYERS and top != layer and top not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module[1:]}")
    assert not wrong, f"{layer}/ must not import " + ", ".join(sorted(set(LAYERS) - ALLOWED[layer] - {layer})) + \
        ":\n" + "\n".join(wrong)


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
