"""The one module that touches ComfyUI (`comfy.*`, `folder_paths`).

Everything has a standalone fallback so the nodes import and are tested without ComfyUI:
model folders fall back to `$INTERACT_CUSTOM_MODELS` (or `models/interact_custom` under the
current directory), mask-bank folders to `$INTERACT_CUSTOM_BANKS` (or
`models/interact_custom_banks`), the embedding cache to the user cache folder, progress to
a no-op, devices to CUDA-if-available, interrupts to none.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from ..pipelines.hardware import cpu_has_fast_bf16  # noqa: F401  (the loaders' warning reads it here)
from ..pipelines.paths import CACHE_ENV, EXAMPLES_DIR

log = logging.getLogger("interact_custom")


def warn(message: str) -> None:
    """A warning the user sees in ComfyUI's console (its log level shows warnings)."""
    log.warning("Interact-Custom: %s", message)

try:  # inside ComfyUI
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.utils as _cutils
    import folder_paths as _folder_paths

    IN_COMFYUI = True
except ImportError:  # standalone (tests, scripts)
    _mm = _patcher = _cutils = _folder_paths = None
    IN_COMFYUI = False

MODEL_FOLDER = "interact_custom"
WEIGHT_EXTENSIONS = {".safetensors", ".sft", ".ckpt", ".pth", ".pt", ".bin"}
# IAMG-R mask banks: each a sub-folder (with bank.json) of a folder registered under this
# name, like model files; the node offers only these, never a path a workflow sends.
BANK_FOLDER = "interact_custom_banks"
BANKS_ENV = "INTERACT_CUSTOM_BANKS"  # standalone: the bank folders, os.pathsep-separated
# The bank-embedding cache inside ComfyUI: under models/, not ComfyUI's temp folder, which
# GET /view serves to every user (and ComfyUI empties at start).
CACHE_FOLDER = "interact_custom_cache"


def clip_tokenizer_dir() -> Path | None:
    """ComfyUI's bundled SD1 (CLIP ViT-L/14) tokenizer folder, ``comfy/sd1_tokenizer``,
    for CLIP-vocabulary IAMG text models whose file carries no tokenizer; None outside
    ComfyUI or when the folder is missing."""
    if _mm is None:
        return None
    folder = Path(_mm.__file__).resolve().parent / "sd1_tokenizer"
    return folder if (folder / "vocab.json").is_file() else None


def _register_folder(name: str, extensions: set[str] | None) -> None:
    """Register ``models/<name>/`` with ComfyUI (``extensions`` filter its listing; None
    keeps what is there). Paths a user added for the same name in extra_model_paths.yaml
    (loaded before custom nodes) are kept."""
    if not IN_COMFYUI:
        return
    default = os.path.join(_folder_paths.models_dir, name)
    entry = _folder_paths.folder_names_and_paths.get(name)
    paths = list(entry[0]) if entry else []
    if default not in paths:
        paths.insert(0, default)
    kept = set(entry[1]) if entry else set()
    _folder_paths.folder_names_and_paths[name] = (paths, set(extensions) if extensions is not None else kept)


def register_model_folder() -> None:
    """Register `models/interact_custom/` (weight-file extensions only)."""
    _register_folder(MODEL_FOLDER, WEIGHT_EXTENSIONS)


def register_bank_folder() -> None:
    """Register `models/interact_custom_banks/` for IAMG-R mask banks (folders, no filter)."""
    _register_folder(BANK_FOLDER, None)


def bank_folders() -> list[str]:
    """Folders whose sub-folders are the mask banks the IAMG-R node offers: ComfyUI's
    `interact_custom_banks` folders; standalone `$INTERACT_CUSTOM_BANKS` (os.pathsep-
    separated) or `models/interact_custom_banks` under the current directory."""
    if IN_COMFYUI:
        return list(_folder_paths.folder_names_and_paths.get(BANK_FOLDER, ([],))[0])
    own = os.environ.get(BANKS_ENV)
    if own:
        return [p for p in own.split(os.pathsep) if p]
    return [os.path.join("models", BANK_FOLDER)]


def embedding_cache_root() -> str | None:
    """Where the IAMG-R node caches bank embeddings: None (the library's user cache
    folder) standalone or when `$INTERACT_CUSTOM_CACHE` names one; inside ComfyUI
    `models/interact_custom_cache/`, so a server keeps what it writes in its own folders."""
    if not IN_COMFYUI or os.environ.get(CACHE_ENV):
        return None
    return os.path.join(_folder_paths.models_dir, CACHE_FOLDER)


# Example inputs (pipelines/assets/examples/*.png) are offered in ComfyUI's input folder under this
# prefix, so the shipped workflows find them right after installation. The input folder is
# flat (LoadImage lists only its top level), hence a unique prefix instead of a subfolder.
# The version in it changes whenever the example images do (v2: the "pushing the bicycle"
# scene), so a copy of older images left in a user's input folder -- never overwritten --
# is not paired with workflows whose box and prompt belong to the new ones.
EXAMPLE_INPUT_PREFIX = "interact_custom_example_v2_"
EXAMPLE_INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def example_input_name(file_name: str) -> str:
    """Name under which ``pipelines/assets/examples/<file_name>`` appears in ComfyUI's input folder."""
    return EXAMPLE_INPUT_PREFIX + file_name


def install_example_inputs(input_dir: str | os.PathLike | None = None) -> list[Path]:
    """Copy the example images into ComfyUI's input folder (or ``input_dir``) as
    ``EXAMPLE_INPUT_PREFIX + <name>``, each only if no file of that name exists there:
    a user's file is never overwritten, and a copy the user edited is kept. Returns the
    files written. Standalone (no ComfyUI, no ``input_dir``) it does nothing. Never
    raises: a read-only input folder only costs the examples, logged."""
    if input_dir is None:
        if not IN_COMFYUI:
            return []
        input_dir = _folder_paths.get_input_directory()
    written = []
    try:
        target_dir = Path(input_dir)
        target_dir.mkdir(parents=True, exist_ok=True)
        for src in sorted(EXAMPLES_DIR.iterdir()):
            if src.suffix.lower() not in EXAMPLE_INPUT_SUFFIXES or not src.is_file():
                continue
            dst = target_dir / example_input_name(src.name)
            if dst.exists():
                continue
            if _copy_exclusive(src, dst):
                written.append(dst)
    except OSError as e:
        log.warning("Interact-Custom: could not copy the example images into %s (%s); the example "
                    "workflows need them: copy pipelines/assets/examples/*.png there as %s<name>", input_dir, e,
                    EXAMPLE_INPUT_PREFIX)
    if written:
        log.info("Interact-Custom: copied %d example image(s) into %s", len(written), input_dir)
    return written


def _copy_exclusive(src: Path, dst: Path) -> bool:
    """Write ``src``'s bytes to ``dst`` only if ``dst`` does not exist, atomically: the data
    goes to a temporary file that is then hard-linked to ``dst`` (which fails if a file
    appeared meanwhile), so no half-written or overwritten file can result. Falls back to
    exclusive creation where hard links are unsupported."""
    data = src.read_bytes()
    fd, tmp = tempfile.mkstemp(prefix=".interact_custom_", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an input image is an ordinary file
        try:
            os.link(tmp, dst)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links (some network / FAT file systems)
            try:
                with open(dst, "xb") as f:
                    f.write(data)
                return True
            except FileExistsError:
                return False
    finally:
        os.unlink(tmp)


def model_folders() -> list[str]:
    """Folders searched for model files, for listing and for error messages."""
    if IN_COMFYUI:
        return _folder_paths.get_folder_paths(MODEL_FOLDER)
    return [os.environ.get("INTERACT_CUSTOM_MODELS", os.path.join("models", MODEL_FOLDER))]


def list_model_files() -> list[str]:
    """Weight files found in the model folders (relative names, sorted): files only — a
    folder named like a weight file is not listed. Symbolic links are followed, as ComfyUI
    does for every model folder (users link big files in from other disks); what a load
    error says about a file never quotes its content (`pipelines.files`)."""
    if IN_COMFYUI:
        return sorted(_folder_paths.get_filename_list(MODEL_FOLDER))
    names = []
    for folder in model_folders():
        root = Path(folder)
        if root.is_dir():
            names += [str(p.relative_to(root)) for p in root.rglob("*")
                      if p.suffix.lower() in WEIGHT_EXTENSIONS and p.is_file()]
    return sorted(names)


def model_file_path(name: str) -> str:
    """Absolute path of a listed model file, or an error naming the folders to put it in.
    ``name`` is relative to a model folder: like ComfyUI, a name cannot leave the folder
    ("../x", "/etc/x" are looked up inside it)."""
    inside = os.path.relpath(os.path.join(os.sep, str(name)), os.sep)  # ComfyUI's normalisation
    if IN_COMFYUI:
        path = _folder_paths.get_full_path(MODEL_FOLDER, inside)
        if path:
            return path
    else:
        for folder in model_folders():
            candidate = os.path.join(folder, inside)
            if os.path.isfile(candidate):
                return candidate
    for folder in model_folders():
        if os.path.isdir(os.path.join(folder, inside)):
            raise IsADirectoryError(f"model file {name!r} is a folder in {folder}, not a weight file; choose a "
                                    "file (.safetensors, .ckpt, .pth, ...)")
    raise FileNotFoundError(
        f"model file {name!r} not found. Put it in one of: {', '.join(model_folders())} "
        "(or add a folder for 'interact_custom' in extra_model_paths.yaml), then refresh the node list.")


def torch_device(choice: str = "auto") -> torch.device:
    """'auto' → ComfyUI's device (or CUDA if available standalone); 'cpu'; 'gpu' (ComfyUI's
    device too, with a warning when that is the CPU; standalone an error without CUDA)."""
    if choice == "cpu":
        return torch.device("cpu")
    if IN_COMFYUI:
        device = _mm.get_torch_device()
        if choice == "gpu" and device.type == "cpu":
            warn("device 'gpu' was requested but this ComfyUI runs on the CPU (no GPU found, or started with "
                 "--cpu): using the CPU")
        return device
    if choice == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("device 'gpu' was requested but no CUDA device is available; choose 'cpu' or 'auto'")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    return _mm.unet_offload_device() if IN_COMFYUI else torch.device("cpu")


def auto_dtype(device: torch.device) -> torch.dtype:
    """What the device runs well: bf16 where supported (CUDA with bf16, CPUs with AMX/AVX512-bf16
    run bf16 matmuls several times faster than fp32), else fp16 on CUDA, else fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


class PatcherRoot(torch.nn.Module):
    """The module handed to ComfyUI's ModelPatcher: a plain container around one of our
    models. The patcher writes its bookkeeping (``device``, ``model_loaded_weight_memory``,
    ``model_lowvram``, ...) as attributes of its root module; a container keeps them off
    our models, where they would clash (``IAMGModel.device`` is a read-only property)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module
        self.device = None  # ModelPatcher sets it to the offload device


_root_classes: dict[str, type] = {}


def named_root(module: torch.nn.Module, label: str) -> PatcherRoot:
    """A PatcherRoot whose class is named `label`: ComfyUI's memory manager logs models by
    class name ("Requested to load MGIG[mgig.ckpt]"), so the console says what it loads."""
    cls = _root_classes.get(label)
    if cls is None:
        cls = _root_classes[label] = type(label, (PatcherRoot,), {"__doc__": PatcherRoot.__doc__})
    return cls(module)


class ManagedModel:
    """A model registered with ComfyUI's memory manager (ModelPatcher), so it is moved to
    the GPU when used and offloaded when other models need the memory. Standalone it is
    a plain module on one device. `label` names it in ComfyUI's log (e.g. "MGIG[mgig.ckpt]")."""

    def __init__(self, module: torch.nn.Module, load_device: torch.device, keep_loaded: bool = True,
                 label: str = "PatcherRoot"):
        self.module = module
        self.load_device = load_device
        self.keep_loaded = keep_loaded
        self.patcher = None
        if IN_COMFYUI:
            self.patcher = _patcher.ModelPatcher(named_root(module, label), load_device=load_device,
                                                 offload_device=offload_device())

    def load(self) -> torch.nn.Module:
        """Make the module ready on its load device and return it."""
        if self.patcher is not None:
            _mm.load_models_gpu([self.patcher])
        else:
            self.module.to(self.load_device)
        return self.module

    def release(self) -> None:
        """Offload after use unless the user asked to keep the model loaded."""
        if self.keep_loaded:
            return
        if self.patcher is not None:
            self.patcher.detach()
            _mm.soft_empty_cache()
        else:
            self.module.to("cpu")


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel."""
    if IN_COMFYUI:
        _mm.throw_exception_if_processing_interrupted()


class Progress:
    """Per-step progress with an optional preview image; checks Cancel on every update."""

    def __init__(self, total: int):
        self.total = total
        self.bar = _cutils.ProgressBar(total) if IN_COMFYUI else None

    def update(self, step: int, preview=None) -> None:
        """``preview``: a PIL image (small) shown on the node while sampling."""
        check_interrupt()
        if self.bar is not None:
            self.bar.update_absolute(step, self.total, ("JPEG", preview, 512) if preview is not None else None)
