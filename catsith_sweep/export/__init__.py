"""Exports of trained models into the files CatSith and diffusers read (LoRA formats)."""

from catsith_sweep.export.lora_formats import (
    LoraFormatError,
    LoraLayer,
    apply_layers,
    kohya_name,
    load_lora_file,
    lora_delta,
    lora_layers,
    read_catsith_json,
    save_catsith_json,
    save_kohya_safetensors,
    save_peft_safetensors,
    write_bytes_atomic,
)

__all__ = [
    "LoraFormatError",
    "LoraLayer",
    "apply_layers",
    "kohya_name",
    "load_lora_file",
    "lora_delta",
    "lora_layers",
    "read_catsith_json",
    "save_catsith_json",
    "save_kohya_safetensors",
    "save_peft_safetensors",
    "write_bytes_atomic",
]
