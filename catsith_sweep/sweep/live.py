"""Driver objects that Tune pickles with a sweep but that belong to the driver session running it.

Tune keeps the tuner's callbacks, stopper and searcher in `tune/tuner.pkl` and unpickles them when a sweep
is resumed (`Tuner.restore`), with no way to pass new ones. The sweep's forecast and budget (sweep/forecast.py,
sweep/budget.py) hold this session's clock; pickled as they were, a resumed sweep would count from the first
session's start (and its driver would hold other copies than Tune's). So each one is pickled as its name
only (`Live.live_key`), and unpickled as the object this driver registered under that name before
restoring: Tune's callbacks and stopper and the driver then share one object, with this session's clock.
"""

from __future__ import annotations

from typing import Any

_registered: dict[str, Any] = {}


def register(key: str, obj: Any) -> None:
    """`obj` is what a pickled `key` becomes in this process from now on."""
    _registered[key] = obj


def live(key: str) -> Any:
    """The object registered under `key` (unpickling a `Live` object calls this)."""
    try:
        return _registered[key]
    except KeyError:
        raise RuntimeError(f"{key!r} was unpickled before the driver registered this session's object under "
                           "that name (sweep.live.register): restore a sweep only through the driver") from None


class Live:
    """Pickled by name once `live_key` is set (see the module docstring); by value before."""

    live_key: str | None = None

    def __reduce_ex__(self, protocol: Any) -> Any:
        if self.live_key is None:
            return super().__reduce_ex__(protocol)
        return live, (self.live_key,)
