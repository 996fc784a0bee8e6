"""CatSith registry packages: write atomically, read, verify and list (catsith-formats.md §1).

Knows nothing of Ray or MLflow; the LoRA weights come in as `catsith_sweep.export.LoraLayer`s.
"""

from catsith_sweep.registry.manifest import (
    Category,
    Compatibility,
    Creator,
    Manifest,
    Preview,
    WeightsRef,
    blake3_ints,
    package_hash,
)
from catsith_sweep.registry.package import PackageError, PackageResult, write_package
from catsith_sweep.registry.verify import (
    Finding,
    PackageInfo,
    has_errors,
    list_packages,
    verify_package,
    verify_registry,
)
from catsith_sweep.registry.weights_bin import (
    BinLayer,
    WeightsBin,
    WeightsBinError,
    decode_weights_bin,
    encode_weights_bin,
    read_weights_bin,
    write_weights_bin,
)

__all__ = [
    "BinLayer",
    "Category",
    "Compatibility",
    "Creator",
    "Finding",
    "Manifest",
    "PackageError",
    "PackageInfo",
    "PackageResult",
    "Preview",
    "WeightsBin",
    "WeightsBinError",
    "WeightsRef",
    "blake3_ints",
    "decode_weights_bin",
    "encode_weights_bin",
    "has_errors",
    "list_packages",
    "package_hash",
    "read_weights_bin",
    "verify_package",
    "verify_registry",
    "write_package",
    "write_weights_bin",
]
