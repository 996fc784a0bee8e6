"""LoRA exports: from a diffusers model carrying a PEFT adapter to the files CatSith and diffusers read.

Everything goes through one neutral in-memory form, `LoraLayer`: a component-prefixed module path
(`unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`, `text_encoder.<path>`), the down
projection (PEFT's `lora_A.weight`, rank x in), the up projection (`lora_B.weight`, out x rank) and alpha.
Its weight delta for a torch Linear (out x in) is `(alpha / rank) * up @ down` (`lora_delta`).

Formats written (every file atomically: a temp file in the same directory, then `os.replace`):

* PEFT/diffusers safetensors (`save_peft_safetensors`): keys `unet.<path>.lora_A.weight` /
  `.lora_B.weight`, as `StableDiffusionPipeline.save_lora_weights` writes them.
  **Alpha decision.** CatSith's safetensors loader reads alpha from a `<layer>.alpha` key (default: the
  rank), but diffusers 0.42's `load_lora_weights` rejects any key without the substring "lora"
  ("Invalid LoRA checkpoint. Make sure all LoRA param names contain `'lora'` substring."), so `.alpha`
  keys make the file unloadable by diffusers. Diffusers' own way (the JSON `lora_adapter_metadata` header
  entry) is unknown to CatSith. Both loaders agree when alpha == rank, so this writer folds the scale into
  the up projection (`lora_B * alpha / rank`) and writes no alpha keys: diffusers and CatSith then apply
  the same delta with no alpha information at all. The trained alphas are kept in the header
  (`catsith_sweep.alphas`), and `load_lora_file` unfolds them, so rank/alpha survive a round trip.
* kohya safetensors (`save_kohya_safetensors`): `lora_unet_<path with _>.lora_down.weight` /
  `.lora_up.weight` / `.alpha` (text encoder: `lora_te_...`). Diffusers converts this naming itself and
  applies the `.alpha` keys as `network_alphas`, so alpha is stored unfolded here.
* CatSith JSON (`save_catsith_json`), the shape of the training guide's `convert_lora.py`:
  `{"metadata": {name, version "1.0", base_model, rank, alpha}, "layers": {name: {"A", "B"}}}`.
  As in the guide (which copies kohya tensors as stored), **A is the down projection as stored
  (rank x in) and B the up projection (out x rank)**; note that weights.bin stores both transposed.
  Layer names are the dotted component-prefixed module paths CatSith's code matches (the guide's example
  happens to keep kohya names because its input is a kohya file).

`load_lora_file` reads back any of the three (plus foreign PEFT files with `.alpha` keys or diffusers'
`lora_adapter_metadata`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from catsith_sweep.errors import UserInputError
from catsith_sweep.io import atomic_write_bytes as write_bytes_atomic

PEFT_FORMAT = "catsith_sweep.peft_diffusers_lora.v1"
KOHYA_FORMAT = "catsith_sweep.kohya_lora.v1"
CATSITH_JSON_VERSION = "1.0"
COMPONENTS = ("unet", "text_encoder")
# kohya's prefixes per diffusers component (kohya-ss sd-scripts naming, also what diffusers converts).
_KOHYA_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
_META = "catsith_sweep."
_KEY = re.compile(r"^(?P<layer>.+)\.(?P<part>lora_A\.weight|lora_down\.weight|lora_B\.weight|lora_up\.weight|alpha)$")


class LoraFormatError(UserInputError):
    """A LoRA file or layer set cannot be written or read (bad keys, shapes, mixed ranks...)."""


@dataclass(frozen=True, eq=False)
class LoraLayer:
    """One LoRA'd Linear: delta (out x in) = (alpha / rank) * up @ down. Tensors are CPU float32."""

    name: str
    down: torch.Tensor  # lora_A / lora_down: rank x in
    up: torch.Tensor  # lora_B / lora_up: out x rank
    alpha: float

    def __post_init__(self) -> None:
        # Normalise once so every writer can assume detached, contiguous CPU float32.
        object.__setattr__(self, "down", self.down.detach().to("cpu", torch.float32).contiguous())
        object.__setattr__(self, "up", self.up.detach().to("cpu", torch.float32).contiguous())
        object.__setattr__(self, "alpha", float(self.alpha))
        if self.down.ndim != 2 or self.up.ndim != 2:
            raise LoraFormatError(f"{self.name}: LoRA factors must be 2-D (Linear layers only)")
        if self.down.shape[0] != self.up.shape[1] or self.down.shape[0] == 0:
            raise LoraFormatError(
                f"{self.name}: down is {tuple(self.down.shape)} and up is {tuple(self.up.shape)}; "
                "expected rank x in and out x rank with the same rank > 0"
            )
        if not math.isfinite(self.alpha):
            raise LoraFormatError(f"{self.name}: alpha {self.alpha} is not finite")

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def in_dim(self) -> int:
        return int(self.down.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.up.shape[0])


def lora_delta(layer: LoraLayer) -> torch.Tensor:
    """The weight delta of a layer in torch Linear layout (out x in): (alpha / rank) * up @ down."""
    return (layer.alpha / layer.rank) * (layer.up @ layer.down)


# --------------------------------------------------------------------------- extraction from a model


def lora_layers(
    unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None, *, adapter_name: str | None = None
) -> list[LoraLayer]:
    """Collect the LoRA layers of a PEFT-adapted UNet (and text encoder) in the neutral form.

    Alpha is read per module as PEFT resolved it (`scaling * r`), not from the top-level LoraConfig,
    so `alpha_pattern`, `rank_pattern` and rsLoRA are all exported with the delta PEFT applies.
    """
    layers: list[LoraLayer] = []
    for component, model in (("unet", unet), ("text_encoder", text_encoder)):
        if model is not None:
            layers += _component_layers(component, model, adapter_name)
    if not layers:
        raise LoraFormatError("the model carries no LoRA adapter layers (was add_adapter called?)")
    return layers


def _component_layers(component: str, model: torch.nn.Module, adapter_name: str | None) -> list[LoraLayer]:
    """The LoRA layers of one component, named `<component>.<module path>`."""
    from peft.tuners.lora import LoraLayer as PeftLoraLayer  # lazy: importing peft costs ~7 s

    found: list[LoraLayer] = []
    for path, module in model.named_modules():
        if not isinstance(module, PeftLoraLayer):
            continue
        adapter = _pick_adapter(f"{component}.{path}", module, adapter_name)
        if adapter is None:
            continue
        down_mod, up_mod = module.lora_A[adapter], module.lora_B[adapter]
        if not isinstance(down_mod, torch.nn.Linear) or not isinstance(up_mod, torch.nn.Linear):
            raise LoraFormatError(f"{component}.{path}: only LoRA on Linear layers can be exported")
        if module.use_dora.get(adapter, False) or up_mod.bias is not None:
            raise LoraFormatError(f"{component}.{path}: DoRA / LoRA bias adapters cannot be exported")
        rank = int(module.r[adapter])
        # A get_peft_model wrapper prefixes paths with "base_model.model."; CatSith wants the bare path.
        bare = path.removeprefix("base_model.model.")
        alpha = float(module.scaling[adapter]) * rank
        found.append(LoraLayer(f"{component}.{bare}", down_mod.weight, up_mod.weight, alpha))
    return found


def _pick_adapter(where: str, module: Any, adapter_name: str | None) -> str | None:
    """The adapter to export from one PEFT layer: the named one, else the single active one."""
    if adapter_name is not None:
        return adapter_name if adapter_name in module.lora_A else None
    active = [a for a in module.active_adapters if a in module.lora_A]
    if len(active) > 1:
        raise LoraFormatError(f"{where}: several active adapters {active}; pass adapter_name=")
    return active[0] if active else None


def apply_layers(
    model: torch.nn.Module, layers: Iterable[LoraLayer], strength: float = 1.0, *, component: str = "unet"
) -> int:
    """Merge the layers named `<component>.*` into a plain model's Linear weights; returns how many.

    This is the merge CatSith performs (`W += strength * delta`), used to check exports numerically.
    """
    count = 0
    for layer in layers:
        if not layer.name.startswith(component + "."):
            continue
        module = model.get_submodule(layer.name[len(component) + 1 :])
        module = getattr(module, "base_layer", module)  # a PEFT-wrapped Linear keeps its weight there
        if not isinstance(module, torch.nn.Linear) or tuple(module.weight.shape) != (layer.out_dim, layer.in_dim):
            raise LoraFormatError(f"{layer.name}: no Linear of shape {layer.out_dim} x {layer.in_dim} there")
        with torch.no_grad():
            module.weight += (strength * lora_delta(layer)).to(module.weight.dtype)
        count += 1
    return count


# --------------------------------------------------------------------------- safetensors writers


def kohya_name(name: str) -> str:
    """`unet.down_blocks.0.attn1.to_q` -> `lora_unet_down_blocks_0_attn1_to_q` (kohya-ss naming)."""
    component, _, path = name.partition(".")
    if component not in _KOHYA_PREFIX or not path:
        raise LoraFormatError(f"{name}: layer names must start with one of {sorted(_KOHYA_PREFIX)}")
    return f"{_KOHYA_PREFIX[component]}_{path.replace('.', '_')}"


def save_peft_safetensors(
    layers: Sequence[LoraLayer],
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any] | str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write PEFT/diffusers-named safetensors with alpha/rank folded into lora_B (see module docstring).

    `config` (the resolved experiment config: a mapping, stored as JSON, or text such as YAML) and any
    `metadata` entries (strings as they are, other values as JSON) go into the header as
    `catsith_sweep.<key>`.
    """
    _check_names(layers)
    tensors: dict[str, torch.Tensor] = {}
    for layer in layers:
        tensors[f"{layer.name}.lora_A.weight"] = layer.down.clone()
        tensors[f"{layer.name}.lora_B.weight"] = layer.up * (layer.alpha / layer.rank)
    meta = _header(layers, PEFT_FORMAT, config, metadata)
    meta[_META + "alpha_folded"] = "true"
    meta[_META + "alphas"] = json.dumps({layer.name: layer.alpha for layer in layers})
    write_bytes_atomic(path, safetensors_save(tensors, metadata=meta))
    return Path(path)


def save_kohya_safetensors(
    layers: Sequence[LoraLayer],
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any] | str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write kohya-named safetensors (`lora_down` / `lora_up` / `alpha` per layer), alpha unfolded.

    `config` and `metadata` go into the header as in `save_peft_safetensors`.
    """
    _check_names(layers)
    tensors: dict[str, torch.Tensor] = {}
    for layer in layers:
        key = kohya_name(layer.name)
        tensors[f"{key}.lora_down.weight"] = layer.down.clone()
        tensors[f"{key}.lora_up.weight"] = layer.up.clone()
        tensors[f"{key}.alpha"] = torch.tensor(layer.alpha, dtype=torch.float32)
    write_bytes_atomic(path, safetensors_save(tensors, metadata=_header(layers, KOHYA_FORMAT, config, metadata)))
    return Path(path)


def _check_names(layers: Sequence[LoraLayer]) -> None:
    """Refuse empty sets, duplicate names and names without a known component prefix."""
    if not layers:
        raise LoraFormatError("no LoRA layers to write")
    dupes = [n for n, c in Counter(layer.name for layer in layers).items() if c > 1]
    if dupes:
        raise LoraFormatError(f"duplicate layer names: {', '.join(sorted(dupes))}")
    for layer in layers:
        if layer.name.partition(".")[0] not in _KOHYA_PREFIX:
            raise LoraFormatError(f"{layer.name}: layer names must start with unet. or text_encoder.")


def _header(
    layers: Sequence[LoraLayer],
    fmt: str,
    config: Mapping[str, Any] | str | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, str]:
    """The string-only safetensors header: torch's "format" marker plus our own keys."""
    meta = {"format": "pt"}
    for key, value in (extra or {}).items():
        meta[_META + key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    meta[_META + "format"] = fmt  # set after `extra`: callers cannot overwrite what readers rely on
    meta[_META + "rank"] = _uniform_or_json({layer.rank for layer in layers})
    meta[_META + "alpha"] = _uniform_or_json({layer.alpha for layer in layers})
    if config is not None:
        meta[_META + "config"] = config if isinstance(config, str) else json.dumps(config, sort_keys=True)
    return meta


def _uniform_or_json(values: set[Any]) -> str:
    """One value as plain text; several (per-layer ranks/alphas) as a sorted JSON list."""
    return str(next(iter(values))) if len(values) == 1 else json.dumps(sorted(values))


# --------------------------------------------------------------------------- CatSith JSON


def save_catsith_json(layers: Sequence[LoraLayer], path: str | os.PathLike[str], *, name: str, base_model: str) -> Path:
    """Write the training guide's CatSith JSON: A = down (rank x in), B = up (out x rank), as stored.

    The metadata has a single rank and alpha, so layers of mixed rank or alpha are refused.
    """
    _check_names(layers)
    rank, alpha = _single(layers, "rank"), _single(layers, "alpha")
    doc = {
        "metadata": {
            "name": name,
            "version": CATSITH_JSON_VERSION,
            "base_model": base_model,
            "rank": int(rank),
            "alpha": float(alpha),
        },
        "layers": {layer.name: {"A": layer.down.tolist(), "B": layer.up.tolist()} for layer in layers},
    }
    write_bytes_atomic(path, json.dumps(doc).encode("utf-8"))
    return Path(path)


def _single(layers: Sequence[LoraLayer], attr: str) -> float:
    values = sorted({getattr(layer, attr) for layer in layers})
    if len(values) != 1:
        raise LoraFormatError(f"CatSith JSON holds one {attr} for all layers; these layers have {values}")
    return float(values[0])


def read_catsith_json(path: str | os.PathLike[str]) -> list[LoraLayer]:
    """Read a CatSith JSON LoRA back into layers (alpha from its metadata)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        meta, raw = doc["metadata"], doc["layers"]
        alpha, rank = float(meta["alpha"]), int(meta["rank"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoraFormatError(f"{path}: not a CatSith LoRA JSON ({exc})") from exc
    layers = []
    for name, ab in raw.items():
        try:
            layer = LoraLayer(name, torch.tensor(ab["A"]), torch.tensor(ab["B"]), alpha)
        except (KeyError, TypeError, ValueError) as exc:
            raise LoraFormatError(f"{path}: layer {name}: needs numeric A and B matrices ({exc})") from exc
        if layer.rank != rank:
            raise LoraFormatError(f"{path}: layer {name} has rank {layer.rank}, metadata says {rank}")
        layers.append(layer)
    return layers


# --------------------------------------------------------------------------- reading any format


def load_lora_file(path: str | os.PathLike[str], *, module_names: Iterable[str] | None = None) -> list[LoraLayer]:
    """Read a LoRA from CatSith JSON, PEFT/diffusers safetensors or kohya safetensors.

    Kohya names cannot be turned back into dotted module paths alone (`to_q` vs `to.q`); pass the
    dotted, component-prefixed `module_names` of the target (e.g. from `lora_layers`) to map them,
    otherwise kohya names are kept as they are.
    """
    p = Path(path)
    if p.suffix.lower() == ".json":
        return read_catsith_json(p)
    try:
        with safe_open(str(p), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises several unrelated types for a bad file
        raise LoraFormatError(f"{p}: cannot read as safetensors ({exc})") from exc
    parts = _group_keys(p, tensors)
    lookup = {kohya_name(n): n for n in module_names or ()}
    layers = []
    for layer_name, got in parts.items():
        if "down" not in got or "up" not in got:
            raise LoraFormatError(f"{p}: layer {layer_name} lacks its {'up' if 'down' in got else 'down'} weight")
        if lookup and layer_name.startswith("lora_") and layer_name not in lookup:
            raise LoraFormatError(f"{p}: kohya layer {layer_name} matches none of the module names given")
        rank = int(got["down"].shape[0])
        try:
            up, alpha = got["up"], _alpha_for(layer_name, got, header, rank)
        except ValueError as exc:  # a malformed JSON header entry
            raise LoraFormatError(f"{p}: unreadable alpha metadata ({exc})") from exc
        if header.get(_META + "alpha_folded") == "true" and alpha != 0:
            up = up / (alpha / rank)  # undo the fold of save_peft_safetensors
        layers.append(LoraLayer(lookup.get(layer_name, layer_name), got["down"], up, alpha))
    if not layers:
        raise LoraFormatError(f"{p}: holds no LoRA layers")
    return layers


def _group_keys(path: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group `<layer>.lora_A.weight`-style keys by layer; unknown keys are an error, not ignored."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        part = match["part"]
        role = "alpha" if part == "alpha" else "down" if part.startswith(("lora_A", "lora_down")) else "up"
        parts.setdefault(match["layer"], {})[role] = tensor
    if unknown:
        raise LoraFormatError(f"{path}: keys that are not LoRA weights: {', '.join(sorted(unknown)[:5])}")
    return parts


def _alpha_for(name: str, got: Mapping[str, torch.Tensor], header: Mapping[str, str], rank: int) -> float:
    """Alpha from, in order: a `<layer>.alpha` key, our header, diffusers' adapter metadata, the rank."""
    if "alpha" in got:
        return float(got["alpha"].reshape(-1)[0])
    ours = json.loads(header.get(_META + "alphas", "{}"))
    if name in ours:
        return float(ours[name])
    adapter_meta = header.get("lora_adapter_metadata")
    if adapter_meta:
        cfg = json.loads(adapter_meta)
        component = name.partition(".")[0]
        if cfg.get(f"{component}.alpha_pattern"):
            raise LoraFormatError(f"{name}: per-module alpha_pattern in lora_adapter_metadata is not supported")
        lora_alpha = cfg.get(f"{component}.lora_alpha")
        if lora_alpha is not None:
            # rsLoRA scales by alpha / sqrt(r); express it as an alpha over the plain rank.
            rs = bool(cfg.get(f"{component}.use_rslora"))
            return float(lora_alpha) * (math.sqrt(rank) if rs else 1.0)
    return float(rank)
