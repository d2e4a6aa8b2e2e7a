"""Channel adapters by kind, found through the entry-point group `dualflow.adapters`.

The built-in adapters register the same way a third party's would (pyproject
`[project.entry-points."dualflow.adapters"]`), so there is one way in. A
channel's configuration names its `kind`; the entry point of that name is a
factory `(ChannelConfig) -> ChannelAdapter`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from .contract import ENTRY_POINT_GROUP, ChannelAdapter, ChannelConfig

Factory = Callable[[ChannelConfig], ChannelAdapter]


class UnknownChannelKind(LookupError):
    def __init__(self, kind: str, known: list[str]) -> None:
        super().__init__(f"no channel adapter of kind {kind!r} is installed (installed: {', '.join(known) or 'none'})")
        self.kind = kind


def factories() -> dict[str, Factory]:
    """Every installed adapter factory by kind (loading each entry point)."""
    return {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}


def kinds() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def build(config: ChannelConfig) -> ChannelAdapter:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == config.kind]
    if not found:
        raise UnknownChannelKind(config.kind, kinds())
    factory: Factory = found[0].load()
    return factory(config)
