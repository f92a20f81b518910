"""The snapshot as JSON: the body of `/api/v1/snapshot`, through pydantic so every field type round-trips.

The type adapter is built on first use, in the collector, so the HTTP server never pays for its schema.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import TypeAdapter

    from exporter.model import Snapshot


@cache
def _adapter() -> TypeAdapter[Any]:
    from pydantic import TypeAdapter

    from exporter.model import Snapshot

    return TypeAdapter(Snapshot)


def snapshot_json(snapshot: Snapshot) -> bytes:
    return _adapter().dump_json(snapshot)
