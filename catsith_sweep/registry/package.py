"""Writing CatSith registry packages (`<registry>/<slug>/manifest.json + weights.bin + previews`).

Atomicity: a package is assembled in `<registry>/.staging/<random>/` (same filesystem, so the final
`os.rename` is atomic) and renamed to `<registry>/<slug>/` only when complete, so CatSith or
`verify_registry` never see a half-written package. The staging area sits one level deeper than the
packages, so a registry scan (sub-directories holding a manifest.json) never picks up a package under
construction. Any failure removes the staging directory.

Concurrency: the choice of target directory and the rename happen under an exclusive lock (`io.file_lock`) on
`<registry>/.staging/.lock`, so two promotions at once cannot pick the same slug. The rename also fails
on an existing non-empty target, which covers writers that do not take the lock.

Existing slug: if `<slug>` (or `<slug>-N`) already holds a package with the same package hash (CatSith's
identity of a LoRA: blake3 of name, category and weights.bin), nothing is written and the result says
"already_present". If it holds different content, the package goes to the first free `<slug>-2`,
`<slug>-3`, ... and the result says "versioned". Packages are never overwritten: a promoted LoRA may
already be in use by a game, and the old version stays there to compare against.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from catsith_sweep.errors import UserInputError
from catsith_sweep.export.lora_formats import LoraLayer
from catsith_sweep.io import DIR_MODE, atomic_write_bytes, file_lock, publish_dir
from catsith_sweep.registry.manifest import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    MAX_WEIGHTS_BYTES,
    WEIGHTS_NAME,
    Category,
    Compatibility,
    Creator,
    Manifest,
    Preview,
    WeightsRef,
    blake3_ints,
    package_hash,
)
from catsith_sweep.registry.weights_bin import encode_weights_bin

STAGING_DIR = ".staging"
LOCK_NAME = ".lock"
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
Status = Literal["written", "versioned", "already_present"]


class PackageError(UserInputError):
    """A package cannot be written from the inputs given (bad slug, missing preview, ...)."""


@dataclass(frozen=True)
class PackageResult:
    """What `write_package` did: where the package is and whether it was new, versioned or already there."""

    path: Path
    slug: str
    status: Status
    manifest: Manifest
    message: str
    warnings: list[str] = field(default_factory=list)


def write_package(
    registry_dir: str | os.PathLike[str],
    *,
    slug: str,
    layers: Sequence[LoraLayer],
    name: str,
    category: Category | str,
    creator: Creator | Mapping[str, str | None] | str,
    description: str = "",
    tags: Sequence[str] = (),
    license: str = "",
    previews: Sequence[tuple[str | os.PathLike[str], str]] = (),
    compatible_with: Sequence[Compatibility | tuple[str, str]] = (),
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
    created_at: int | None = None,
) -> PackageResult:
    """Promote LoRA `layers` into `<registry_dir>/<slug>/` atomically (see the module docstring)."""
    registry = Path(registry_dir)
    _check_inputs(slug, name, previews, extra_files or {})
    alpha, layers = common_alpha(layers)
    weights = encode_weights_bin(layers)
    if len(weights) > MAX_WEIGHTS_BYTES:
        raise PackageError(f"weights.bin would be {len(weights)} bytes; CatSith refuses more than 1 GiB")
    cat = Category(category)
    preview_names = _preview_names(previews)
    manifest = Manifest(
        version=MANIFEST_VERSION,
        hash=package_hash(name, cat, weights),
        name=name,
        description=description,
        creator=_creator(creator),
        category=cat,
        compatible_with=[
            c if isinstance(c, Compatibility) else Compatibility(name=c[0], version=c[1]) for c in compatible_with
        ],
        weights=WeightsRef(
            path=WEIGHTS_NAME, size_bytes=len(weights), hash=blake3_ints(weights), rank=layers[0].rank, alpha=alpha
        ),
        previews=[Preview(path=dst, description=desc) for dst, (_, desc) in zip(preview_names, previews, strict=True)],
        license=license,
        tags=list(tags),
        created_at=int(time.time()) if created_at is None else created_at,
    )
    staging = registry / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=staging, prefix=f"{slug}."))
    try:
        _fill(tmp, manifest, weights, previews, preview_names, extra_files or {})
        with file_lock(staging / LOCK_NAME):
            return _place(registry, tmp, slug, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename


def _check_inputs(
    slug: str,
    name: str,
    previews: Sequence[tuple[str | os.PathLike[str], str]],
    extra_files: Mapping[str, str | os.PathLike[str]],
) -> None:
    """Collect every input problem at once, so the user fixes them in one go."""
    problems = []
    if not _SLUG.match(slug):
        problems.append(f"slug {slug!r}: use letters, digits, '.', '_' or '-', not starting with '.' or '-'")
    if not name.strip():
        problems.append("name is empty (CatSith indexes packages by name)")
    for src, _ in previews:
        if not Path(src).is_file():
            problems.append(f"preview {src}: no such file")
    reserved = {MANIFEST_NAME, WEIGHTS_NAME}
    for rel, src in extra_files.items():
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts or rel.startswith("."):
            problems.append(f"extra file name {rel!r} must be a relative path inside the package")
        elif rel in reserved or pure.name.startswith("preview"):
            problems.append(f"extra file name {rel!r} collides with a file the package writes")
        if not Path(src).is_file():
            problems.append(f"extra file {src}: no such file")
    if problems:
        raise PackageError(problems, title="cannot write the CatSith package:")


def common_alpha(layers: Sequence[LoraLayer]) -> tuple[float, list[LoraLayer]]:
    """The one alpha a manifest holds, and `layers` rescaled to it: a layer with another alpha gets the
    ratio folded into its up projection (the same delta). `promote` applies it to name the weights."""
    if not layers:
        raise PackageError("no LoRA layers to package")
    alpha = Counter(layer.alpha for layer in layers).most_common(1)[0][0]
    if alpha == 0:
        raise PackageError("alpha is 0: the LoRA would change nothing")
    # (a_i / r) * up = (alpha / r) * (up * a_i / alpha): the same delta under the common alpha.
    return alpha, [
        layer if layer.alpha == alpha else LoraLayer(layer.name, layer.down, layer.up * (layer.alpha / alpha), alpha)
        for layer in layers
    ]


def _creator(creator: Creator | Mapping[str, str | None] | str) -> Creator:
    if isinstance(creator, Creator):
        return creator
    if isinstance(creator, str):
        return Creator(name=creator)
    return Creator.model_validate(dict(creator))


def _preview_names(previews: Sequence[tuple[str | os.PathLike[str], str]]) -> list[str]:
    """Package-local preview names: preview.png, preview-2.png, ... (source names may be anything)."""
    names = []
    for i, (src, _) in enumerate(previews, start=1):
        suffix = Path(src).suffix.lower() or ".png"
        names.append(f"preview{suffix}" if i == 1 else f"preview-{i}{suffix}")
    return names


def _fill(
    tmp: Path,
    manifest: Manifest,
    weights: bytes,
    previews: Sequence[tuple[str | os.PathLike[str], str]],
    preview_names: list[str],
    extra_files: Mapping[str, str | os.PathLike[str]],
) -> None:
    """Write every file of the package into the staging dir; the manifest last, as the completion mark."""
    atomic_write_bytes(tmp / WEIGHTS_NAME, weights)
    for (src, _), dst in zip(previews, preview_names, strict=True):
        atomic_write_bytes(tmp / dst, Path(src).read_bytes())
    for rel, src in extra_files.items():
        atomic_write_bytes(tmp / rel, Path(src).read_bytes())
    atomic_write_bytes(tmp / MANIFEST_NAME, manifest.to_json())
    os.chmod(tmp, DIR_MODE)  # mkdtemp makes 0700; a registry is read by the game, maybe as another user


def _place(registry: Path, tmp: Path, slug: str, manifest: Manifest) -> PackageResult:
    """Under the lock: find `<slug>` or `<slug>-N` to use, then rename the staged package there."""
    n = 1
    while True:
        candidate = slug if n == 1 else f"{slug}-{n}"
        target = registry / candidate
        if target.exists() or target.is_symlink():
            if _existing_hash(target) == manifest.hash:
                msg = f"package {candidate} already holds this LoRA (same package hash); nothing written"
                return PackageResult(target, candidate, "already_present", manifest, msg)
            n += 1
            continue
        try:
            publish_dir(tmp, target)
        except OSError:  # someone without the lock created it meanwhile: try the next name
            n += 1
            continue
        status: Status = "written" if n == 1 else "versioned"
        msg = f"wrote package {candidate}" + (f" ({slug} holds a different LoRA)" if n > 1 else "")
        return PackageResult(target, candidate, status, manifest, msg, _shadow_warnings(registry, target, manifest))


def _existing_hash(pkg: Path) -> list[int] | None:
    """The package hash an existing package's manifest claims, or None if it has no readable manifest."""
    try:
        return Manifest.model_validate_json((pkg / MANIFEST_NAME).read_bytes()).hash
    except (OSError, ValueError):
        return None


def _shadow_warnings(registry: Path, new: Path, manifest: Manifest) -> list[str]:
    """CatSith indexes the registry by name: other packages with this name would shadow each other."""
    clashes = []
    for other in sorted(registry.iterdir()):
        if other == new or other.name.startswith(".") or not (other / MANIFEST_NAME).is_file():
            continue
        with contextlib.suppress(OSError, ValueError):
            if Manifest.model_validate_json((other / MANIFEST_NAME).read_bytes()).name == manifest.name:
                clashes.append(other.name)
    if not clashes:
        return []
    return [
        f"name {manifest.name!r} is also used by {', '.join(clashes)}: CatSith indexes LoRAs by name, "
        "so only one of them will be reachable; give this version a distinct name"
    ]
