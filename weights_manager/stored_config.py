"""Checks of the settings a weight file stores, before any of them is used.

A model file is data from elsewhere (a download, a shared server's model folder): the
settings in it — our safetensors' ``config`` / ``tokenizer`` metadata, an official
checkpoint's schedule buffers and ``config_dict`` — are validated here, one checker per
model kind, before a model is built from them: types, finite numbers, sane ranges, the
allowed values of a choice. Tensor shapes are checked elsewhere (each loader compares
the settings with the shapes); tensor values and dtypes by `files.check_finite`.

Every failure is one `WeightsError` naming the file and the setting ("vae.scaling_factor")
and saying what was expected. A stored number is shown (it helps to see "nan" or "-256");
long strings are described, not quoted.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

import torch

from ..pipelines import samplers
from ..pipelines.files import DTYPES, FORMAT_NAME, FORMAT_VERSION, WeightsError
from ..pipelines.mgig.inputs import COLOUR_HINT_CHANNELS, HINT_CHANNELS
from ..pipelines.text import TRAINED_WORDS_FILE

# Bounds of a sane setting. Latent scales: SD's 0.18215, or what training calibrated for
# a small VAE (`training.models.calibrated_latent_scale`, docs/METHOD.md §11.4); far
# outside means a broken VAE or an edit.
LATENT_SCALE_RANGE = (1e-3, 1e3)
LATENT_SHIFT_MAX = 1e3
MAX_IMAGE_SIZE = 2048
MAX_LEVELS = 8
MAX_WIDTH = 65536
# Activations a CLIP-style text encoder may use (transformers' names, parameter-free).
TEXT_ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_fast", "gelu_accurate", "gelu_pytorch_tanh",
                    "relu", "silu", "swish")
# Files a stored prompt tokenizer may hold (`text.PromptTokenizer`).
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", TRAINED_WORDS_FILE)
MODEL_KINDS = ("mgig", "iamg", "vae")
MGIG_COLOUR_HINT_CHANNELS = HINT_CHANNELS + COLOUR_HINT_CHANNELS

_MISSING = object()


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a string of {len(value)} characters"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _bad(what: str, field: str, expected: str, value: Any = _MISSING) -> WeightsError:
    got = "" if value is _MISSING else f", got {_shown(value)}"
    return WeightsError(f"{what}: stored setting '{field}': expected {expected}{got}; the file is damaged or "
                        "was edited — refusing to load it")


class _Settings:
    """Typed access to one stored dict, each failure naming ``what`` and the dotted field."""

    def __init__(self, data: Any, what: str, field: str = "config", known: tuple[str, ...] | None = None,
                 required: tuple[str, ...] = ()):
        if not isinstance(data, Mapping):
            raise _bad(what, field, "an object", data)
        self.data, self.what, self.prefix = data, what, f"{field}." if field != "config" else ""
        if known is not None:
            unknown = sorted(str(k) for k in data if k not in known)
            if unknown:
                raise _bad(what, self.name(unknown[0]), f"one of the known settings ({', '.join(known)}); is the "
                           "file from a newer version of this package?")
        for key in required:
            if key not in data:
                raise _bad(what, self.name(key), "a value (the setting is missing)")

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def has(self, key: str) -> bool:
        return key in self.data

    def sub(self, key: str, known=None, required=(), optional: bool = False) -> "_Settings | None":
        value = self.data.get(key)
        if value is None and optional:
            return None
        return _Settings(value, self.what, self.name(key), known, required)

    def int(self, key: str, low: int = 1, high: int | None = None, default=_MISSING) -> int:
        value = self.data.get(key, default)
        if value is _MISSING:
            raise _bad(self.what, self.name(key), "a value (the setting is missing)")
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        if type(value) is not int or value < low or (high is not None and value > high):
            raise _bad(self.what, self.name(key), f"a whole number {span}", value)
        return value

    def optional_int(self, key: str, low: int = 1, high: int | None = None) -> int | None:
        return None if self.data.get(key) is None else self.int(key, low, high)

    def number(self, key: str, low: float, high: float, default=_MISSING, *, open_low: bool = False) -> float:
        value = self.data.get(key, default)
        if value is _MISSING:
            raise _bad(self.what, self.name(key), "a value (the setting is missing)")
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (value > low if open_low else value >= low) and value <= high)
        if not ok:
            raise _bad(self.what, self.name(key), f"a finite number {'>' if open_low else '>='} {low:g} and "
                       f"<= {high:g}", value)
        return float(value)

    def ints(self, key: str, low: int = 1, high: int = MAX_WIDTH, length: int | None = None) -> list[int]:
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            raise _bad(self.what, self.name(key), "a value (the setting is missing)")
        size = f"{length}" if length is not None else f"1 to {MAX_LEVELS}"
        if (not isinstance(value, list) or not (len(value) == length if length is not None
                                                else 1 <= len(value) <= MAX_LEVELS)
                or not all(type(v) is int and low <= v <= high for v in value)):
            raise _bad(self.what, self.name(key), f"a list of {size} whole numbers from {low} to {high}", value)
        return value

    def choice(self, key: str, choices, default=_MISSING) -> str:
        value = self.data.get(key, default)
        if value not in choices:
            raise _bad(self.what, self.name(key), f"one of {', '.join(map(str, choices))}",
                       _MISSING if value is _MISSING else value)
        return value


def _check_groups(s: _Settings, widths: list[int], key: str = "norm_num_groups") -> None:
    if s.has(key):
        groups = s.int(key, 1, MAX_WIDTH)
        if any(w % groups for w in widths):
            raise _bad(s.what, s.name(key), f"a number of groups that divides every width {widths}", groups)


def _check_image_size(s: _Settings, factor: int, default=_MISSING) -> None:
    """``image_size``: a multiple of the model's total down-sampling (VAE × UNet), so every
    level of the UNet gets a whole number of latent pixels."""
    size = s.data.get("image_size", default)
    if size is _MISSING:
        raise _bad(s.what, s.name("image_size"), "a value (the setting is missing)")
    if type(size) is not int or not factor <= size <= MAX_IMAGE_SIZE or size % factor:
        raise _bad(s.what, s.name("image_size"), f"a multiple of {factor} (the VAE's and the UNet's down-sampling) "
                   f"from {factor} to {MAX_IMAGE_SIZE}", size)


# --------------------------------------------------------------------------------------
# Metadata shared by our files
# --------------------------------------------------------------------------------------

def check_metadata(metadata: Mapping[str, str], what: str) -> None:
    """The top-level metadata of one of our files (`files.save_native`): a known format
    version, model kind and dtype. Files without our ``format`` marker carry none."""
    if metadata.get("format") != FORMAT_NAME:
        return
    if metadata.get("format_version") != FORMAT_VERSION:
        raise _bad(what, "format_version", f"{FORMAT_VERSION!r} (is the file from a newer version of this "
                   "package?)", metadata.get("format_version"))
    if "model" in metadata and metadata["model"] not in MODEL_KINDS:
        raise _bad(what, "model", f"one of {', '.join(MODEL_KINDS)}", metadata["model"])
    if "dtype" in metadata and metadata["dtype"] not in DTYPES:
        raise _bad(what, "dtype", f"one of {', '.join(DTYPES)}", metadata["dtype"])


def _stored_json(metadata: Mapping[str, str], key: str, what: str, expected: str) -> Any:
    """The JSON value of the metadata entry ``key``; `_MISSING` when the file has none (or
    an empty one); a `WeightsError` saying ``expected`` when it is not valid JSON."""
    raw = metadata.get(key)
    if not raw:
        return _MISSING
    try:
        return json.loads(raw)
    except ValueError:
        raise _bad(what, key, f"{expected} (it is not valid JSON)") from None


def parse_config(metadata: Mapping[str, str], what: str) -> dict | None:
    """The ``config`` metadata as a dict (None when the file has none); a `WeightsError`
    when it is not a JSON object. Check it with the checker of its model kind."""
    check_metadata(metadata, what)
    config = _stored_json(metadata, "config", what, "a JSON object")
    if config is _MISSING:
        return None
    if not isinstance(config, dict):
        raise _bad(what, "config", "a JSON object", config)
    return config


def check_vae_settings(vae: Any, what: str, field: str = "vae") -> None:
    """A stored `AutoencoderKL` config (the settings shapes do not show are used: the
    latent scale and the GroupNorm groups; the rest is compared with the shapes)."""
    s = _Settings(vae, what, field)
    widths = s.ints("block_out_channels") if s.has("block_out_channels") else []
    if s.has("latent_channels"):
        s.int("latent_channels", 1, MAX_WIDTH)
    if s.has("layers_per_block"):
        s.int("layers_per_block", 1, 64)
    _check_groups(s, widths)
    if s.has("scaling_factor"):
        s.number("scaling_factor", *LATENT_SCALE_RANGE)


def _vae_factor(vae: Any) -> int:
    widths = vae.get("block_out_channels") if isinstance(vae, Mapping) else None
    return 2 ** (len(widths) - 1) if isinstance(widths, list) and widths else 8


# --------------------------------------------------------------------------------------
# MGIG
# --------------------------------------------------------------------------------------

MGIG_FIELDS = ("unet", "controlnet", "id_encoder", "vae", "schedule", "image_size", "prediction_type", "refiner",
               "colour_hint")


def check_schedule(schedule: Any, what: str, field: str = "schedule") -> None:
    """An LDM "linear" noise schedule: 0 < linear_start <= linear_end < 1 over the
    samplers' 1000 training steps."""
    s = _Settings(schedule, what, field, known=("linear_start", "linear_end", "num_train_timesteps"),
                  required=("linear_start", "linear_end", "num_train_timesteps"))
    start = s.number("linear_start", 0.0, 1.0, open_low=True)
    end = s.number("linear_end", 0.0, 1.0, open_low=True)
    if end >= 1.0 or start > end:
        raise _bad(what, s.name("linear_end"), f"a number below 1 and >= linear_start ({start:g})", end)
    n = samplers.NUM_TRAIN_TIMESTEPS
    if s.data["num_train_timesteps"] != n or type(s.data["num_train_timesteps"]) is not int:
        raise _bad(what, s.name("num_train_timesteps"), f"{n} (the samplers' training steps)",
                   s.data["num_train_timesteps"])


def check_mgig_config(config: Any, what: str) -> None:
    """Every setting of an MGIG ``config`` (`MGIGConfig.to_dict`) that loading uses beyond
    the shapes: head widths, GroupNorm groups, latent scale, schedule, working size,
    prediction type; and the types of the rest, which are compared with the shapes."""
    s = _Settings(config, what, known=MGIG_FIELDS, required=("unet", "controlnet", "id_encoder", "vae"))
    levels = 1
    for part in ("unet", "controlnet"):
        net = s.sub(part)
        widths = net.ints("block_out_channels")
        levels = len(widths)
        heads = net.data.get("attention_head_dim")
        if (not isinstance(heads, list) or len(heads) != len(widths)
                or not all(type(h) is int and h >= 1 and w % h == 0 for h, w in zip(heads, widths))):
            raise _bad(what, net.name("attention_head_dim"), f"a head count per level that divides its width "
                       f"{widths}", net.data.get("attention_head_dim"))
        _check_groups(net, widths)
    encoder = s.sub("id_encoder", required=("dinov2", "context_dim"))
    encoder.int("context_dim", 1, MAX_WIDTH)
    dino = encoder.sub("dinov2", required=("hidden_size", "num_attention_heads"))
    hidden = dino.int("hidden_size", 1, MAX_WIDTH)
    heads = dino.int("num_attention_heads", 1, MAX_WIDTH)
    if hidden % heads:
        raise _bad(what, dino.name("num_attention_heads"), f"a head count that divides the width {hidden}", heads)
    check_vae_settings(s.data["vae"], what)
    if s.has("schedule"):
        check_schedule(s.data["schedule"], what)
    _check_image_size(s, _vae_factor(s.data["vae"]) * 2 ** (levels - 1), default=512)
    s.choice("prediction_type", samplers.PREDICTION_TYPES, default="epsilon")
    s.sub("refiner", optional=True)
    colour_hint = s.data.get("colour_hint", False)
    if type(colour_hint) is not bool:
        raise _bad(what, "colour_hint", "true or false (★ the hint carries the references' colours)", colour_hint)
    channels = s.data["controlnet"].get("conditioning_channels")
    if colour_hint and channels != MGIG_COLOUR_HINT_CHANNELS:
        raise _bad(what, "controlnet.conditioning_channels", f"{MGIG_COLOUR_HINT_CHANNELS} (colour_hint is true: "
                   "the official 4 hint channels and the colour planes)", channels)


def check_schedule_buffers(sd: Mapping[str, torch.Tensor], what: str) -> None:
    """An official MGIG file's ``betas`` buffer (its schedule is read from it): one value per
    training step, each in (0, 1)."""
    betas = sd.get("betas")
    if betas is None:
        return
    n = samplers.NUM_TRAIN_TIMESTEPS
    if betas.ndim != 1 or betas.numel() != n:
        raise _bad(what, "betas", f"{n} values (one per training step)", f"shape {tuple(betas.shape)}")
    b = betas.double()
    if not bool(((b > 0) & (b < 1)).all()):
        raise _bad(what, "betas", "values between 0 and 1 (a noise schedule)", f"values from {float(b.min()):g} "
                   f"to {float(b.max()):g}")


# --------------------------------------------------------------------------------------
# IAMG
# --------------------------------------------------------------------------------------

IAMG_FIELDS = ("unet", "vae", "text_encoder", "scale_factor", "image_size", "latent_shift", "prediction_type")
IAMG_UNET_FIELDS = ("in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks",
                    "attention_resolutions", "num_heads", "cross_attention_dim", "norm_num_groups")
TEXT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "max_position_embeddings", "hidden_act", "bos_token_id", "eos_token_id", "pad_token_id")


def check_iamg_config(config: Any, what: str) -> None:
    """Every setting of an IAMG ``config`` (`native_iamg.model_config`): the UNet's head
    count and groups, the VAE's, the text encoder's heads, activation and special tokens,
    the latent scale and shift, the working size and the prediction type; and the types of
    the rest, which are compared with the shapes."""
    s = _Settings(config, what, known=IAMG_FIELDS)
    unet_levels = 1
    latent_channels = None
    if s.has("unet"):
        unet = s.sub("unet", known=IAMG_UNET_FIELDS)
        for key in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "num_heads",
                    "norm_num_groups"):
            if unet.has(key):
                unet.int(key, 1, MAX_WIDTH)
        if unet.has("channel_mult"):
            mult = unet.ints("channel_mult")
            unet_levels = len(mult)
            base = unet.data.get("model_channels", 320)
            widths = [base * m for m in mult]
            _check_groups(unet, widths)
            if unet.has("num_heads") and any(w % unet.data["num_heads"] for w in widths):
                raise _bad(what, unet.name("num_heads"), f"a head count that divides every width {widths}",
                           unet.data["num_heads"])
        rates = unet.data.get("attention_resolutions", [])
        if not isinstance(rates, list) or not all(type(r) is int and 1 <= r <= 2 ** MAX_LEVELS for r in rates):
            raise _bad(what, unet.name("attention_resolutions"), "a list of down-sampling factors (1, 2, 4, ...)",
                       rates)
        unet.optional_int("cross_attention_dim", 1, MAX_WIDTH)
        latent_channels = unet.data.get("out_channels")
    if s.has("vae"):
        check_vae_settings(s.data["vae"], what)
        latent_channels = s.data["vae"].get("latent_channels", latent_channels)
    text = s.sub("text_encoder", known=TEXT_FIELDS, optional=True)
    if text is not None:
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "max_position_embeddings"):
            if text.has(key):
                text.int(key, 1, 10**7)
        hidden, heads = text.data.get("hidden_size"), text.data.get("num_attention_heads")
        if hidden is not None and heads is not None and hidden % heads:
            raise _bad(what, text.name("num_attention_heads"), f"a head count that divides the width {hidden}",
                       heads)
        if text.has("hidden_act"):
            text.choice("hidden_act", TEXT_ACTIVATIONS)
        vocab = text.data.get("vocab_size", 10**7)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if text.has(key):
                text.int(key, 0, vocab - 1)
    if s.has("scale_factor"):
        s.number("scale_factor", *LATENT_SCALE_RANGE)
    if s.has("image_size"):
        _check_image_size(s, _vae_factor(s.data.get("vae")) * 2 ** (unet_levels - 1))
    shift = s.data.get("latent_shift")
    if shift is not None:
        n = latent_channels if type(latent_channels) is int else None
        if (not isinstance(shift, list) or (n is not None and len(shift) != n) or not shift
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           and abs(v) <= LATENT_SHIFT_MAX for v in shift)):
            count = f"{n} " if n is not None else ""
            raise _bad(what, "latent_shift", f"null or a list of {count}finite numbers (one per latent channel) "
                       f"within ±{LATENT_SHIFT_MAX:g}", shift)
    if s.has("prediction_type"):
        s.choice("prediction_type", samplers.PREDICTION_TYPES)


def parse_tokenizer(metadata: Mapping[str, str], what: str) -> dict[str, str] | None:
    """The ``tokenizer`` metadata (JSON {file name: text}) as a dict, None when absent; a
    `WeightsError` when it is not a map of the known tokenizer files to text."""
    files = _stored_json(metadata, "tokenizer", what, "a JSON object of tokenizer files")
    if files is _MISSING:
        return None
    if (not isinstance(files, dict) or not files or set(files) - set(TOKENIZER_FILES)
            or not all(isinstance(v, str) for v in files.values())):
        raise _bad(what, "tokenizer", f"a JSON object mapping {', '.join(TOKENIZER_FILES)} to their text", files)
    if TRAINED_WORDS_FILE in files:
        try:
            words = json.loads(files[TRAINED_WORDS_FILE])
        except ValueError:
            words = None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise _bad(what, "tokenizer", f"{TRAINED_WORDS_FILE} as a JSON list of words")
    return files


def check_official_iamg_settings(ckpt: Mapping, what: str) -> None:
    """The settings an official ``iamg.pth`` stores besides weights that loading uses: the
    DDPM table ``diffusion.alphas_cumprod`` (1000 values, each in (0, 1], never rising)
    and the head count in ``config_dict.model.params.num_heads``."""
    diffusion = ckpt.get("diffusion")
    table = diffusion.get("alphas_cumprod") if isinstance(diffusion, Mapping) else None
    if isinstance(table, torch.Tensor):
        n = samplers.NUM_TRAIN_TIMESTEPS
        field = "diffusion.alphas_cumprod"
        if table.ndim != 1 or table.numel() != n:
            raise _bad(what, field, f"{n} values (one per training step)", f"shape {tuple(table.shape)}")
        a = table.double()
        if not bool(torch.isfinite(a).all()) or not bool(((a > 0) & (a <= 1)).all()) \
                or not bool((a[1:] <= a[:-1]).all()):
            raise _bad(what, field, "a falling sequence of values in (0, 1] (a noise schedule)")
    params = ckpt.get("config_dict")
    for key in ("model", "params"):
        params = params.get(key) if isinstance(params, Mapping) else None
    if isinstance(params, Mapping) and params.get("num_heads") not in (None, -1):
        s = _Settings(params, what, "config_dict.model.params")
        s.int("num_heads", 1, MAX_WIDTH)
