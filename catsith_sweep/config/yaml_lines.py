"""Safe YAML loading that remembers the line of every key, so errors can name `file:line`.

The loader is `yaml.SafeLoader` with bounds, each refused as a ConfigError naming the file and line:
- aliases: a "billion laughs" file is a few hundred bytes whose aliases expand to billions of values.
  PyYAML shares aliased nodes, so parsing is cheap; anything that walks the result (validation, a deep
  copy, our line walker) would expand it. The expanded size is counted on the shared node graph
  (memoised, linear in the file) and refused above MAX_EXPANDED_VALUES.
- nesting deeper than MAX_DEPTH (PyYAML's composer recurses: `[` x 3000 is a RecursionError);
- integers over 64 bits or with thousands of digits (int() refuses more than 4300 digits);
- non-finite floats (`.inf`, `.nan`, `1e999`): no config value means "infinite";
- duplicate keys in one mapping (YAML says they are an error; PyYAML lets the last one win);
- files that are not regular files (a FIFO blocks forever) or larger than MAX_CONFIG_BYTES.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from catsith_sweep.errors import ConfigError, quote
from catsith_sweep.user_input import UnreadableFile, read_user_bytes

KeyPath = tuple[str | int, ...]

MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_EXPANDED_VALUES = 100_000
MAX_INT_DIGITS = 40
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlLimitError(yaml.MarkedYAMLError):
    """A bound of this loader was hit (not a syntax error): always reported, never read as a string."""


class BoundedSafeLoader(yaml.SafeLoader):
    """SafeLoader with the bounds of the module doc; one instance per document."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self.first_alias_line: int | None = None

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent) and self.first_alias_line is None:
            self.first_alias_line = self.peek_event().start_mark.line + 1
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(None, None, f"nested deeper than {MAX_DEPTH} levels; expected a plain "
                                     "config", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node: MappingNode = super().compose_mapping_node(anchor)
        first_line: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = (key_node.tag, key_node.value)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise YamlLimitError(None, None, f"duplicate key {quote(key_node.value)} (lines "
                                     f"{first_line[key]} and {line}); a later value would silently replace "
                                     "the earlier one, so keep one", key_node.start_mark)
            first_line[key] = line
        return node

    def construct_yaml_int(self, node: ScalarNode) -> int:
        digits = sum(ch.isalnum() for ch in node.value)
        if digits > MAX_INT_DIGITS:
            raise YamlLimitError(None, None, f"an integer with {digits:,} digits; expected at most "
                                 f"{MAX_INT_DIGITS}", node.start_mark)
        value: int = super().construct_yaml_int(node)
        if not -(2**63) <= value < 2**63:
            raise YamlLimitError(None, None, f"the integer {quote(node.value, limit=45)} does not fit in 64 "
                                 "bits", node.start_mark)
        return value

    def construct_yaml_float(self, node: ScalarNode) -> float:
        value: float = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise YamlLimitError(None, None, f"{quote(node.value, limit=45)} is not a finite number; "
                                 "expected a finite number", node.start_mark)
        return value


BoundedSafeLoader.add_constructor("tag:yaml.org,2002:int", BoundedSafeLoader.construct_yaml_int)
BoundedSafeLoader.add_constructor("tag:yaml.org,2002:float", BoundedSafeLoader.construct_yaml_float)


def _expanded_size(node: Node, memo: dict[int, int]) -> int:
    """How many values `node` stands for once aliases are expanded (memoised on shared nodes)."""
    known = memo.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, SequenceNode):
        size += sum(_expanded_size(item, memo) for item in node.value)
    memo[id(node)] = size
    return size


def parse_bounded_yaml(text: str) -> tuple[Any, Node | None]:
    """(data, node graph) of one YAML document within the bounds; yaml.YAMLError on failure
    (YamlLimitError for a bound). RecursionError/ValueError from PyYAML are turned into YAMLErrors."""
    loader = BoundedSafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        size = _expanded_size(node, {})
        if size > MAX_EXPANDED_VALUES:
            where = loader.first_alias_line
            raise YamlLimitError(None, None, f"the document expands to {size:,} values through its aliases "
                                 f"(first alias on line {where}); at most {MAX_EXPANDED_VALUES:,} are "
                                 "allowed (an alias bomb?)", node.start_mark if where is None else
                                 yaml.Mark("", 0, where - 1, 0, "", 0))
        return loader.construct_document(node), node
    except (RecursionError, ValueError, OverflowError) as exc:
        raise YamlLimitError(None, None, f"cannot be parsed ({type(exc).__name__}: "
                             f"{quote(str(exc), limit=80)})", None) from None
    finally:
        loader.dispose()


def describe_yaml_error(where: str, exc: yaml.YAMLError) -> str:
    """`file:line: invalid YAML: problem` for a PyYAML or bound error."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        where = f"{where}:{mark.line + 1}"
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context:  # PyYAML splits "expected a single document, but found another document" in two
        problem = f"{problem.removeprefix('but ')} ({context})"
    label = "refused" if isinstance(exc, YamlLimitError) else "invalid YAML"
    return f"{where}: {label}: {problem}"


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse `path` with `yaml.safe_load` semantics within bounds; also return {key path: 1-based line}."""
    try:
        text = read_user_bytes(path, max_bytes=MAX_CONFIG_BYTES, what="YAML file").decode("utf-8")
    except UnreadableFile as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data, node = parse_bounded_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(describe_yaml_error(str(path), exc)) from None
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines, set())
    return data, lines


def _walk(node: Node, prefix: KeyPath, lines: dict[KeyPath, int], seen: set[int]) -> None:
    lines.setdefault(prefix, node.start_mark.line + 1)
    if id(node) in seen:
        return  # an alias of a node already walked: its keys have lines under its first path
    seen.add(id(node))
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else str(key_node.value)
            path = (*prefix, key)
            lines[path] = key_node.start_mark.line + 1
            _walk(value_node, path, lines, seen)
            lines[path] = key_node.start_mark.line + 1
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*prefix, index), lines, seen)


def line_of(lines: dict[KeyPath, int], loc: KeyPath) -> int | None:
    """Line of the deepest known prefix of `loc` (a missing key reports its parent's line)."""
    for end in range(len(loc), -1, -1):
        line = lines.get(tuple(loc[:end]))
        if line is not None:
            return line
    return None
