"""Reading test-vector folders (the `manifest.json` format of the shared test vectors)
and comparing our outputs with their reference arrays.

A folder holds `manifest.json` plus, per part (`preproc`, `mgig`, `iamg`), an `.npz` of
arrays and possibly a checkpoint. Each part has a checker module
(`vectors_<part>.py`) exposing ``check(folder: VectorFolder) -> Iterator[Result]`` that
yields one Result for every array of that part it knows about: a comparison, an input
it consumed, or a documented skip. `verify` reports any array left without a Result as
a failure, so a new array in a future vector set can never pass silently.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

# Default tolerance for float outputs: max|ours - ref| / max|ref| (docs/METHOD.md §10).
REL_TOL = 1e-4


@dataclass
class Result:
    """Outcome for one reference array."""

    name: str
    status: str  # "PASS" | "FAIL" | "SKIPPED" | "INPUT"
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    tolerance: str = ""
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def compare(name: str, ours: Any, ref: np.ndarray, *, rel_tol: float = REL_TOL,
            int_levels: float | None = None, note: str = "") -> Result:
    """Compare one array.

    Float references: error = max|ours - ref| / max|ref| must be <= ``rel_tol``.
    Integer / uint8 references: max|ours - ref| must be <= ``int_levels`` (default 0,
    i.e. exact); pass ``int_levels=1`` where a resize implementation may round differently.
    """
    if hasattr(ours, "detach"):
        ours = ours.detach().cpu().float().numpy() if ours.dtype.is_floating_point else ours.detach().cpu().numpy()
    ours = np.asarray(ours)
    ref = np.asarray(ref)
    if ours.shape != ref.shape:
        return Result(name, "FAIL", note=f"shape {tuple(ours.shape)} != reference {tuple(ref.shape)}")
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref.astype(np.float64)).max()) if ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    if np.issubdtype(ref.dtype, np.integer) or ref.dtype == np.bool_:
        levels = 0 if int_levels is None else int_levels
        ok = max_abs <= levels
        tol = f"<= {levels:g} level" + ("s" if levels != 1 else "")
    else:
        ok = bool(np.isfinite(max_rel)) and max_rel <= rel_tol
        tol = f"rel <= {rel_tol:g}"
    return Result(name, "PASS" if ok else "FAIL", max_abs, max_rel, tol, note)


def skipped(name: str, reason: str) -> Result:
    return Result(name, "SKIPPED", note=reason)


def used_as_input(name: str, note: str = "input") -> Result:
    return Result(name, "INPUT", note=note)


class ManifestError(ValueError):
    """A test-vector folder's manifest.json that cannot be used; the message names it."""


def read_manifest(path: Path) -> dict:
    """A test-vector ``manifest.json`` as a dict; `ManifestError` naming the file when it
    is empty, not JSON, or not a JSON object (with a ``parts`` object)."""
    expected = "expected the format of shared/testvectors: a JSON object with 'parts'"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not a text file ({e.reason}); {expected}") from e
    if not text.strip():
        raise ManifestError(f"{path}: the file is empty; {expected}")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                            f"{expected}") from e
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object, found a {_json_type(manifest)}; {expected}")
    parts = manifest.get("parts", {})
    if not isinstance(parts, dict) or not all(isinstance(v, dict) for v in parts.values()):
        found = f"a {_json_type(parts)}" if not isinstance(parts, dict) else "an entry that is not an object"
        raise ManifestError(f"{path}: 'parts' must be an object of objects (part name -> file, arrays, "
                            f"checkpoint), found {found}; {expected}")
    return manifest


def _json_type(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


@dataclass
class VectorFolder:
    """A test-vector folder: its manifest, arrays (loaded lazily) and checkpoint paths."""

    path: Path
    manifest: dict = field(init=False)

    def __post_init__(self):
        self.path = Path(self.path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a test-vector folder: it has no manifest.json "
                "(expected the format of shared/testvectors)")
        self.manifest = read_manifest(manifest_path)
        self._arrays: dict[str, Any] = {}

    @property
    def parts(self) -> list[str]:
        return list(self.manifest.get("parts", {}))

    def part(self, name: str) -> dict:
        try:
            return self.manifest["parts"][name]
        except KeyError:
            raise KeyError(f"test-vector folder {self.path} has no part {name!r} "
                           f"(it has: {', '.join(self.parts) or 'none'})") from None

    @property
    def torch_threads(self) -> int | None:
        """The torch thread count the reference outputs were computed with (manifest
        ``environment.torch_threads``), or None when the manifest does not say."""
        n = (self.manifest.get("environment") or {}).get("torch_threads")
        return n if isinstance(n, int) and n > 0 else None

    @contextlib.contextmanager
    def reference_threads(self):
        """Run the block with the reference's torch thread count. Some references are
        ill-conditioned: the reduced MGIG's ControlNet residuals at t = 981 go through a
        GroupNorm of a nearly constant hint embedding, whose channels-last CPU kernel
        splits its sums by thread, so other thread counts land far outside the tolerance
        where the reference's own thread count reproduces it (docs/METHOD.md §10). The count is a
        partition of the work, not the cores used, so this reproduces on any machine."""
        import torch

        before, wanted = torch.get_num_threads(), self.torch_threads
        if wanted is not None:
            torch.set_num_threads(wanted)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def arrays(self, part: str):
        """The part's npz (lazy, cached); index it like a dict of numpy arrays."""
        if part not in self._arrays:
            self._arrays[part] = np.load(self.path / self.part(part)["file"], allow_pickle=False)
        return self._arrays[part]

    def array_names(self, part: str) -> list[str]:
        return list(self.part(part).get("arrays", {}))

    def checkpoint(self, part: str) -> Path | None:
        info = self.part(part).get("checkpoint")
        return self.path / info["file"] if info else None

    @cached_property
    def reduced_configs(self) -> dict | None:
        """Optional cross-check data (never required: architectures are detected from tensors)."""
        p = self.path / "reduced_configs.json"
        return json.loads(p.read_text()) if p.is_file() else None
