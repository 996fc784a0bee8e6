"""Error types the CLI turns into exit codes.

`UserInputError` (and its subclasses) means bad input: a config, a dataset, an argument. The CLI prints
every problem it carries and exits 2, with no traceback. Anything else raised while running is a
failure (exit 1).
"""

from __future__ import annotations

from collections.abc import Iterable


class UserInputError(Exception):
    """Bad input from the user. Carries every problem found, each one self-contained line."""

    def __init__(self, problems: str | Iterable[str], *, title: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.title = title
        super().__init__(self.render())

    def render(self) -> str:
        lines = [self.title] if self.title else []
        lines += self.problems if not self.title else [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class ConfigError(UserInputError):
    """An experiment or search-space file is invalid."""


class DatasetError(UserInputError):
    """A sprite dataset is invalid or unreadable."""


class ModelSourceError(UserInputError):
    """A base model cannot be found or loaded (bad path, hub id while offline, ...)."""


def quote(value: object, *, limit: int = 60) -> str:
    """User text fit for a one-line message: repr'd (so newlines and control characters show as
    escapes), cut to `limit` characters. A whole file pasted into a message (a config pointing at
    /etc/passwd, a 1 MB caption) is noise at best and a leak at worst."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def shorten(text: object, *, limit: int = 60) -> str:
    """A key or name from user data as plain text on one line: control characters escaped, cut to
    `limit` characters (unlike `quote`, printable short text is left as it is)."""
    text = str(text)
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= limit else text[: limit - 1] + "…"
