"""Checking CatSith registry packages the way CatSith's loader and validator do, and listing them.

Errors are what makes CatSith refuse a package (loader) or its validator fail: missing manifest or
weights, empty name or weights path, size_bytes 0, weights over 1 GiB, length != size_bytes, blake3 !=
weights.hash, rank 0. We add what CatSith would trip over later or what would be a security hole: a
package hash that does not match, an unparseable weights.bin or one whose rank differs from the
manifest, a manifest path that leaves the package dir (`..`, absolute, or a symlink pointing out).
Warnings are what CatSith loads anyway but warns about (empty previews or tags, unknown
compatible_with names), plus fields serde would silently ignore and names that shadow each other.

Hostile packages are findings, never crashes: a manifest.json that is a symlink out of the package (to
another package's manifest), a FIFO, over MAX_MANIFEST_BYTES, nested deeper than any real manifest or
holding NaN or 5,000-digit numbers; paths with NUL bytes; non-finite alpha or weights. Verifying a
registry checks each package on its own, so one broken package never hides the verdicts on the others.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

from pydantic import ValidationError

from catsith_sweep.errors import quote, shorten
from catsith_sweep.registry.manifest import (
    KNOWN_COMPATIBLE,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    MAX_WEIGHTS_BYTES,
    Manifest,
    blake3_ints,
    hash_hex,
    package_hash,
    unknown_fields,
)
from catsith_sweep.registry.weights_bin import WeightsBinError, decode_weights_bin
from catsith_sweep.user_input import UnreadableFile, loads_bounded_json, read_user_bytes

Severity = Literal["error", "warning"]
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few KB; CatSith reads it whole


@dataclass(frozen=True)
class Finding:
    """One problem found in a package; only errors make CatSith refuse it."""

    severity: Severity
    message: str

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


def _err(message: str) -> Finding:
    return Finding("error", message)


def _warn(message: str) -> Finding:
    return Finding("warning", message)


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.is_error for f in findings)


def read_manifest(pkg: Path) -> tuple[Manifest, object]:
    """The parsed manifest of `pkg` and its raw JSON; ValueError (one line, file named) when it cannot
    be used: missing, a symlink out of the package, not a regular file, too big, not bounded JSON, or
    not CatSith's schema (a ValidationError, which the caller may format per field)."""
    path = pkg / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        raise ValueError(f"not a package: {MANIFEST_NAME} is missing")
    problem = _path_problem(pkg, MANIFEST_NAME)
    if problem:  # e.g. a link to another package's manifest: this folder would pose as that package
        raise ValueError(f"{MANIFEST_NAME} {problem}")
    try:
        raw_bytes = read_user_bytes(path, max_bytes=MAX_MANIFEST_BYTES, what="manifest")
    except UnreadableFile as exc:
        raise ValueError(f"{MANIFEST_NAME} cannot be read: {exc}") from None
    try:
        raw = loads_bounded_json(raw_bytes)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{MANIFEST_NAME} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") \
            from None
    except ValueError as exc:
        raise ValueError(f"{MANIFEST_NAME} refused: {shorten(exc, limit=120)}") from None
    return Manifest.model_validate_json(raw_bytes), raw


def verify_package(pkg_dir: str | os.PathLike[str]) -> list[Finding]:
    """Every problem of one package directory (empty list: CatSith will load it without a warning).
    Never raises for a bad package: whatever goes wrong is an error finding."""
    pkg = Path(pkg_dir)
    try:
        return _verify_package(pkg)
    except Exception as exc:  # a check we did not foresee must not hide the other packages' verdicts
        return [_err(f"could not be checked ({type(exc).__name__}: {shorten(exc, limit=120)})")]


def _verify_package(pkg: Path) -> list[Finding]:
    try:
        manifest, raw = read_manifest(pkg)
    except ValueError as exc:  # ValidationError is a ValueError
        return [_err(line) for line in _manifest_errors(exc)]
    findings = _field_findings(manifest)
    findings += [_warn(f"{MANIFEST_NAME}: unknown field {quote(name)} (CatSith ignores it)")
                 for name in unknown_fields(raw)]
    findings += _weights_findings(pkg, manifest)
    for preview in manifest.previews:
        problem = _path_problem(pkg, preview.path)
        if problem:
            findings.append(_err(f"previews: path {quote(preview.path)} {problem}"))
        elif not (pkg / preview.path).is_file():
            findings.append(_warn(f"previews: {shorten(preview.path)} is missing"))
    return findings


def _manifest_errors(exc: Exception) -> list[str]:
    """Readable manifest parse errors: one line per bad field, with its dotted location."""
    if isinstance(exc, ValidationError):
        return [
            f"{MANIFEST_NAME}: field {'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
        ]
    return [str(exc)]


def _field_findings(manifest: Manifest) -> list[Finding]:
    """Checks on the manifest's values alone."""
    found = []
    if manifest.version != MANIFEST_VERSION:
        found.append(_err(f"version is {manifest.version}, CatSith reads version {MANIFEST_VERSION}"))
    if not manifest.name:
        found.append(_err("name is empty"))
    if not manifest.weights.path:
        found.append(_err("weights.path is empty"))
    if manifest.weights.size_bytes == 0:
        found.append(_err("weights.size_bytes is 0"))
    if manifest.weights.rank == 0:
        found.append(_err("weights.rank is 0"))
    if not manifest.weights.alpha > 0:  # NaN fails this too
        found.append(_err(f"weights.alpha is {manifest.weights.alpha}; expected a positive finite number "
                          "(CatSith scales the weights by alpha / rank)"))
    if not manifest.previews:
        found.append(_warn("no previews"))
    if not manifest.tags:
        found.append(_warn("no tags"))
    for comp in manifest.compatible_with:
        if comp.name not in KNOWN_COMPATIBLE:
            known = ", ".join(sorted(KNOWN_COMPATIBLE))
            found.append(_warn(f"compatible_with: unknown name {quote(comp.name)} (CatSith knows {known})"))
    return found


def _path_problem(pkg: Path, rel: str) -> str | None:
    """Why a manifest path is unsafe, or None: it must stay inside the package dir, links included."""
    if not rel:
        return "is empty"
    if not rel.isprintable():
        return "holds control characters (a NUL byte, a newline, ...); expected a plain relative path"
    if len(rel.encode("utf-8")) > 1024:
        return "is over 1024 bytes; expected a short relative path"
    if any(len(part.encode("utf-8")) > 255 for part in PurePosixPath(rel.replace("\\", "/")).parts):
        return "has a component over 255 bytes; no file system holds such a name"
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        return "is absolute; paths must be relative to the package"
    if ".." in PurePosixPath(rel.replace("\\", "/")).parts:  # CatSith may run on Windows: "\" too
        return "contains '..' (path traversal)"
    try:
        target = (pkg / rel).resolve()
    except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop
        return f"cannot be resolved ({shorten(exc, limit=80)})"
    if not target.is_relative_to(pkg.resolve()):
        return f"resolves outside the package (symlink to {shorten(target, limit=100)})"
    return None


def _weights_findings(pkg: Path, manifest: Manifest) -> list[Finding]:
    """Size, hashes and content of the weights file, in the order CatSith checks them."""
    ref = manifest.weights
    if not ref.path:
        return []  # already reported
    problem = _path_problem(pkg, ref.path)
    if problem:
        return [_err(f"weights.path {quote(ref.path)} {problem}")]
    path = pkg / ref.path
    if not path.exists():
        return [_err(f"weights file {shorten(ref.path)} is missing")]
    try:
        data = read_user_bytes(path, max_bytes=MAX_WEIGHTS_BYTES, what="weights file of at most 1 GiB")
    except UnreadableFile as exc:
        return [_err(f"weights file {shorten(ref.path)} {exc}")]
    size = len(data)
    found = []
    if size != ref.size_bytes:
        found.append(_err(f"weights file {ref.path} is {size} bytes but weights.size_bytes says {ref.size_bytes}"))
    if blake3_ints(data) != ref.hash:
        found.append(
            _err(
                f"blake3 of {ref.path} ({blake3_ints(data)[:4]}...) differs from weights.hash "
                f"({ref.hash[:4]}...): the file was modified or is corrupt"
            )
        )
    if package_hash(manifest.name, manifest.category, data) != manifest.hash:
        found.append(_err("package hash differs from blake3(name + category byte + weights file)"))
    try:
        parsed = decode_weights_bin(data)
    except WeightsBinError as exc:
        return [*found, _err(f"{ref.path} does not parse: {exc.problems[0]}")]
    if ref.rank and parsed.rank != ref.rank:
        found.append(_err(f"weights.rank is {ref.rank} but {ref.path} has rank {parsed.rank}"))
    odd = [layer.name for layer in parsed.layers if not layer.name.startswith(("unet.", "text_encoder"))]
    if odd:
        found.append(_warn(f"layer names not prefixed by unet. or text_encoder (CatSith matches none): {odd[:3]}"))
    return found


def _has_manifest(folder: Path) -> bool:
    manifest = folder / MANIFEST_NAME
    return manifest.exists() or manifest.is_symlink()  # a broken link or a FIFO is still reported


def _package_dirs(registry: Path) -> list[Path]:
    """Sub-directories CatSith would take as packages: those holding a manifest.json (hidden ones skipped)."""
    return sorted(p for p in registry.iterdir() if not p.name.startswith(".") and p.is_dir() and _has_manifest(p))


def verify_registry(path: str | os.PathLike[str]) -> dict[Path, list[Finding]]:
    """Verify a single package dir, or every package of a registry dir; keys are package dirs.

    A folder that is neither (no manifest.json, and no sub-folder with one) is an error, not "no
    packages": `verify` on a package whose manifest was lost must not pass."""
    root = Path(path)
    if not root.is_dir():
        return {root: [_err("no such directory")]}
    if _has_manifest(root):
        return {root: verify_package(root)}
    results = {pkg: verify_package(pkg) for pkg in _package_dirs(root)}
    if not results:
        return {root: [_err(f"not a package ({MANIFEST_NAME} is missing) and no sub-folder holds one; expected "
                            "a package folder or a registry folder of packages")]}
    by_name: dict[str, list[Path]] = defaultdict(list)
    for info in list_packages(root):
        if info.name is not None:
            by_name[info.name].append(info.path)
    for name, dirs in by_name.items():
        for pkg in dirs if len(dirs) > 1 else ():
            others = ", ".join(d.name for d in dirs if d != pkg)
            results[pkg].append(_warn(f"name {quote(name)} is also used by {others}; CatSith indexes by name"))
    return results


@dataclass(frozen=True)
class PackageInfo:
    """One row of `registry list`; `error` is set (and the rest mostly None) when the manifest is unreadable."""

    slug: str
    path: Path
    name: str | None = None
    category: str | None = None
    rank: int | None = None
    alpha: float | None = None
    size_bytes: int | None = None
    created_at: int | None = None
    tags: tuple[str, ...] = ()
    hash_hex: str | None = None
    error: str | None = None


def list_packages(registry_dir: str | os.PathLike[str]) -> list[PackageInfo]:
    """The packages of a registry dir, by slug, read from their manifests (no hashing: cheap)."""
    root = Path(registry_dir)
    if not root.is_dir():
        return []
    infos = []
    for pkg in _package_dirs(root):
        try:
            m = read_manifest(pkg)[0]
        except ValueError as exc:
            infos.append(PackageInfo(pkg.name, pkg, error=_manifest_errors(exc)[0]))
            continue
        infos.append(
            PackageInfo(
                pkg.name,
                pkg,
                m.name,
                m.category.value,
                m.weights.rank,
                m.weights.alpha,
                m.weights.size_bytes,
                m.created_at,
                tuple(m.tags),
                hash_hex(m.hash),
            )
        )
    return infos
