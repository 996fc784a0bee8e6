"""CatSith registry packages: weights.bin byte layout, manifest hashes, atomic writes and verification."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path
from typing import Any

import blake3
import pytest
import torch

from catsith_sweep.export.lora_formats import LoraLayer, lora_delta
from catsith_sweep.registry import (
    Category,
    PackageError,
    PackageResult,
    WeightsBinError,
    decode_weights_bin,
    encode_weights_bin,
    has_errors,
    list_packages,
    read_weights_bin,
    verify_package,
    verify_registry,
    write_package,
    write_weights_bin,
)

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16  # content is never decoded: any bytes do


def _layers(seed: int = 0, rank: int = 4, alpha: float = 8.0) -> list[LoraLayer]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (32, 32),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (24, 32),
        "text_encoder.encoder.layers.0.self_attn.q_proj": (16, 16),
    }
    return [
        LoraLayer(name, torch.randn(rank, i, generator=gen), torch.randn(o, rank, generator=gen), alpha)
        for name, (i, o) in shapes.items()
    ]


def _write(registry: Path, tmp: Path, *, slug: str = "pixel-ships", seed: int = 0, **kw: Any) -> PackageResult:
    preview = tmp / "sample.PNG"
    preview.write_bytes(PNG)
    args: dict[str, Any] = {
        "slug": slug,
        "layers": _layers(seed),
        "name": "Pixel ships",
        "category": "Entity",
        "creator": {"name": "catsith_sweep", "contact": None, "website": "https://example.org"},
        "description": "Ships in 8 directions",
        "tags": ["ships", "pixel"],
        "license": "CC-BY-4.0",
        "previews": [(preview, "fighter facing up")],
        "compatible_with": [("diffusion_v1", "1.0")],
        "created_at": 1_700_000_000,
    }
    args.update(kw)
    return write_package(registry, **args)


@pytest.fixture
def package(tmp_path: Path) -> Path:
    result = _write(tmp_path / "loras", tmp_path)
    return result.path


def _manifest(pkg: Path) -> dict[str, Any]:
    return json.loads((pkg / "manifest.json").read_text())


def _set_manifest(pkg: Path, doc: dict[str, Any]) -> None:
    (pkg / "manifest.json").write_text(json.dumps(doc))


def _errors(pkg: Path) -> list[str]:
    return [f.message for f in verify_package(pkg) if f.is_error]


# ------------------------------------------------------------------------------------------ weights.bin


def test_weights_bin_exact_bytes() -> None:
    layer = LoraLayer("unet.x", torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[4.0], [5.0]]), 1.0)  # r=1, in 3, out 2
    data = encode_weights_bin([layer])
    expected = b"LORA" + struct.pack("<III", 1, 1, 1) + struct.pack("<I", 6) + b"unet.x" + struct.pack("<II", 3, 2)
    expected += struct.pack("<3f", 1.0, 2.0, 3.0) + struct.pack("<2f", 4.0, 5.0)  # A: in x rank, B: rank x out
    assert data == expected


def test_weights_bin_round_trip_and_catsith_merge(tmp_path: Path) -> None:
    layers = _layers(rank=3, alpha=5.0)
    parsed = read_weights_bin(write_weights_bin(layers, tmp_path / "weights.bin"))
    assert parsed.rank == 3 and [b.name for b in parsed.layers] == [layer.name for layer in layers]
    for bin_layer, layer in zip(parsed.layers, layers, strict=True):
        assert bin_layer.a.shape == (layer.in_dim, 3) and bin_layer.b.shape == (3, layer.out_dim)
        w = torch.randn(layer.in_dim, layer.out_dim)  # CatSith's W is in x out
        merged = w + (layer.alpha / parsed.rank) * (bin_layer.a @ bin_layer.b)  # W' = W + alpha/rank * A@B
        torch.testing.assert_close(merged, w + lora_delta(layer).T, atol=1e-6, rtol=0)
        torch.testing.assert_close(lora_delta(bin_layer.to_lora_layer(layer.alpha)), lora_delta(layer))


def test_weights_bin_refuses_mixed_rank_and_nan(tmp_path: Path) -> None:
    mixed = _layers(rank=4)[:2] + _layers(rank=2)[2:]
    with pytest.raises(WeightsBinError, match=r"one rank for all layers.*\[2, 4\]"):
        write_weights_bin(mixed, tmp_path / "w.bin")
    assert not (tmp_path / "w.bin").exists()
    bad = LoraLayer("unet.x", torch.full((1, 2), float("nan")), torch.ones(2, 1), 1.0)
    with pytest.raises(WeightsBinError, match="non-finite"):
        encode_weights_bin([bad])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"LORB" + d[4:], "bad magic"),
        (lambda d: d[:4] + struct.pack("<I", 2) + d[8:], "unsupported weights.bin version 2"),
        (lambda d: d[:-3], r"truncated: .* B needs"),
        (lambda d: d + b"\x00", "1 trailing bytes"),
        (lambda d: d[:8] + struct.pack("<I", 0) + d[12:], "rank is 0"),
        (lambda d: d[:12] + struct.pack("<I", 9) + d[16:], "truncated"),  # claims 9 layers
    ],
)
def test_weights_bin_strict_reader(mutate: Any, message: str) -> None:
    data = encode_weights_bin(_layers())
    with pytest.raises(WeightsBinError, match=message):
        decode_weights_bin(mutate(data))


# ------------------------------------------------------------------------------------------ packages


def test_written_package_verifies_clean(package: Path) -> None:
    assert sorted(p.name for p in package.iterdir()) == ["manifest.json", "preview.png", "weights.bin"]
    assert verify_package(package) == []
    doc = _manifest(package)
    assert list(doc) == [
        "version",
        "hash",
        "name",
        "description",
        "creator",
        "category",
        "compatible_with",
        "weights",
        "previews",
        "license",
        "tags",
        "created_at",
    ]
    weights = (package / "weights.bin").read_bytes()
    for value in (doc["hash"], doc["weights"]["hash"]):  # arrays of 32 ints, not hex or base64
        assert isinstance(value, list) and len(value) == 32 and all(isinstance(b, int) and 0 <= b < 256 for b in value)
    assert doc["weights"]["hash"] == list(blake3.blake3(weights).digest())
    assert doc["hash"] == list(blake3.blake3(b"Pixel ships" + bytes([1]) + weights).digest())  # Entity = 1
    assert doc["weights"] == {**doc["weights"], "path": "weights.bin", "size_bytes": len(weights), "rank": 4}
    assert doc["weights"]["alpha"] == 8.0 and doc["category"] == "Entity" and doc["version"] == 1
    assert doc["creator"] == {"name": "catsith_sweep", "contact": None, "website": "https://example.org"}
    assert doc["previews"] == [{"path": "preview.png", "description": "fighter facing up"}]
    assert doc["compatible_with"] == [{"name": "diffusion_v1", "version": "1.0"}]
    assert not (package.parent / ".staging").exists() or list((package.parent / ".staging").iterdir()) == [
        package.parent / ".staging" / ".lock"
    ]


def test_category_bytes() -> None:
    assert [c.byte for c in Category] == [0, 1, 2, 3, 4]
    assert [c.value for c in Category] == ["Aesthetic", "Entity", "Effects", "Environment", "Color"]


def test_tampered_weights_byte_flipped(package: Path) -> None:
    data = bytearray((package / "weights.bin").read_bytes())
    data[-1] ^= 0x01  # a float bit: the file still parses, only the hashes can tell
    (package / "weights.bin").write_bytes(bytes(data))
    errors = _errors(package)
    assert any("blake3 of weights.bin" in e and "differs from weights.hash" in e for e in errors)
    assert any("package hash differs" in e for e in errors)
    assert not any("does not parse" in e for e in errors)


def test_truncated_weights(package: Path) -> None:
    data = (package / "weights.bin").read_bytes()
    (package / "weights.bin").write_bytes(data[:-10])
    errors = _errors(package)
    assert f"weights file weights.bin is {len(data) - 10} bytes but weights.size_bytes says {len(data)}" in errors
    assert any("does not parse: truncated" in e for e in errors)


@pytest.mark.parametrize("path", ["../evil.bin", "/etc/passwd", "sub/../../evil.bin", "..\\evil.bin"])
def test_weights_path_traversal(package: Path, path: str) -> None:
    doc = _manifest(package)
    doc["weights"]["path"] = path
    _set_manifest(package, doc)
    (package.parent / "evil.bin").write_bytes((package / "weights.bin").read_bytes())
    errors = _errors(package)
    assert len(errors) == 1 and errors[0].startswith(f"weights.path {path!r}")
    assert "traversal" in errors[0] or "absolute" in errors[0]


def test_symlink_escape(package: Path) -> None:
    (package.parent / "evil.bin").write_bytes((package / "weights.bin").read_bytes())
    (package / "link.bin").symlink_to(package.parent / "evil.bin")
    doc = _manifest(package)
    doc["weights"]["path"] = "link.bin"
    doc["previews"][0]["path"] = "../x.png"
    _set_manifest(package, doc)
    errors = _errors(package)
    assert any(e.startswith("weights.path 'link.bin' resolves outside the package (symlink to ")
               and e.endswith("evil.bin)") for e in errors), errors
    assert "previews: path '../x.png' contains '..' (path traversal)" in errors


def test_wrong_hash_rank_zero_size_mismatch(package: Path) -> None:
    doc = _manifest(package)
    doc["weights"]["hash"] = [0] * 32
    doc["weights"]["rank"] = 0
    doc["weights"]["size_bytes"] += 1
    _set_manifest(package, doc)
    errors = _errors(package)
    assert "weights.rank is 0" in errors
    assert any(e.startswith("blake3 of weights.bin") for e in errors)
    assert any(e.startswith("weights file weights.bin is") and "size_bytes says" in e for e in errors)
    doc["weights"]["rank"] = 2
    _set_manifest(package, doc)
    assert "weights.rank is 2 but weights.bin has rank 4" in _errors(package)


def test_manifest_field_errors(package: Path) -> None:
    doc = _manifest(package)
    doc["hash"] = bytes(doc["hash"]).hex()  # hex is what serde would refuse
    doc["version"] = "1"
    del doc["license"]
    _set_manifest(package, doc)
    errors = _errors(package)
    assert "manifest.json: field version: Input should be a valid integer" in errors
    assert any(e.startswith("manifest.json: field hash:") for e in errors)
    assert "manifest.json: field license: Field required" in errors
    (package / "manifest.json").write_text("{not json")
    assert _errors(package)[0].startswith("manifest.json is not valid JSON")
    (package / "manifest.json").unlink()
    assert _errors(package) == ["not a package: manifest.json is missing"]


def test_empty_name_and_zero_size(package: Path) -> None:
    doc = _manifest(package)
    doc["name"], doc["weights"]["size_bytes"] = "", 0
    _set_manifest(package, doc)
    errors = _errors(package)
    assert "name is empty" in errors and "weights.size_bytes is 0" in errors
    (package / "weights.bin").unlink()
    assert "weights file weights.bin is missing" in _errors(package)


def test_warnings_are_not_errors(tmp_path: Path) -> None:
    result = _write(tmp_path / "r", tmp_path, previews=[], tags=[], compatible_with=[("mystery_v9", "1")])
    findings = verify_package(result.path)
    assert not has_errors(findings)
    messages = {str(f) for f in findings}
    assert {"warning: no previews", "warning: no tags"} <= messages
    assert any("unknown name 'mystery_v9'" in m for m in messages)
    doc = _manifest(result.path)
    doc["extra"] = 1
    _set_manifest(result.path, doc)
    assert "warning: manifest.json: unknown field 'extra' (CatSith ignores it)" in {
        str(f) for f in verify_package(result.path)
    }


def test_same_content_twice_writes_nothing(tmp_path: Path) -> None:
    registry = tmp_path / "loras"
    first = _write(registry, tmp_path)
    second = _write(registry, tmp_path, description="other words, same LoRA")
    assert second.status == "already_present" and second.path == first.path
    assert sorted(p.name for p in registry.iterdir()) == [".staging", "pixel-ships"]


def test_different_content_same_slug_is_versioned(tmp_path: Path) -> None:
    registry = tmp_path / "loras"
    _write(registry, tmp_path)
    second = _write(registry, tmp_path, seed=1)
    third = _write(registry, tmp_path, seed=2, name="Pixel ships v3")
    again = _write(registry, tmp_path, seed=1)
    assert (second.status, second.slug) == ("versioned", "pixel-ships-2")
    assert "pixel-ships holds a different LoRA" in second.message
    assert any("CatSith indexes LoRAs by name" in w for w in second.warnings)
    assert third.slug == "pixel-ships-3" and third.warnings == []
    assert (again.status, again.slug) == ("already_present", "pixel-ships-2")
    infos = list_packages(registry)
    assert [i.slug for i in infos] == ["pixel-ships", "pixel-ships-2", "pixel-ships-3"]
    assert infos[0].name == "Pixel ships" and infos[0].rank == 4 and infos[0].error is None
    results = verify_registry(registry)
    assert not any(has_errors(f) for f in results.values())
    assert any("also used by pixel-ships-2" in str(f) for f in results[registry / "pixel-ships"])
    assert verify_registry(registry / "pixel-ships-3") == {registry / "pixel-ships-3": []}


def test_concurrent_promotions_do_not_corrupt(tmp_path: Path) -> None:
    registry = tmp_path / "loras"
    results: list[PackageResult] = []
    threads = [
        threading.Thread(target=lambda s=seed: results.append(_write(registry, tmp_path, seed=s % 2)))
        for seed in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status for r in results)
    assert statuses.count("already_present") == 2
    assert sorted(p.name for p in registry.iterdir() if not p.name.startswith(".")) == ["pixel-ships", "pixel-ships-2"]
    assert all(not has_errors(f) for f in verify_registry(registry).values())
    assert list((registry / ".staging").iterdir()) == [registry / ".staging" / ".lock"]


def test_bad_inputs_refused_before_writing(tmp_path: Path) -> None:
    registry = tmp_path / "loras"
    with pytest.raises(PackageError) as info:
        _write(
            registry,
            tmp_path,
            slug="../up",
            name=" ",
            previews=[(tmp_path / "none.png", "x")],
            extra_files={"../x": tmp_path / "none.safetensors"},
        )
    text = str(info.value)
    for part in ("slug '../up'", "name is empty", "none.png: no such file", "extra file name '../x'"):
        assert part in text
    assert not registry.exists()


def test_extra_files_and_mixed_alpha(tmp_path: Path) -> None:
    extra = tmp_path / "lora.safetensors"
    extra.write_bytes(b"peft file")
    layers = _layers()
    layers[2] = LoraLayer(layers[2].name, layers[2].down, layers[2].up, 2.0)  # another alpha
    result = _write(tmp_path / "r", tmp_path, layers=layers, extra_files={"lora.safetensors": extra})
    pkg = result.path
    assert (pkg / "lora.safetensors").read_bytes() == b"peft file"
    assert not has_errors(verify_package(pkg)) and _manifest(pkg)["weights"]["alpha"] == 8.0
    parsed = read_weights_bin(pkg / "weights.bin")
    for bin_layer, layer in zip(parsed.layers, layers, strict=True):  # folded, same delta under alpha 8
        torch.testing.assert_close(lora_delta(bin_layer.to_lora_layer(8.0)), lora_delta(layer), atol=1e-6, rtol=0)
