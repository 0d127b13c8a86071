"""Who is changing things right now. Entry points set it (the admin/DRF middleware, management
commands, the catalog file loader); audit.recorder reads it when it records a change. A
contextvar, so it follows the code into threads started by asgiref and into async tasks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Actor = str | Callable[[], str]

_actor: ContextVar[Actor | None] = ContextVar("audit_actor", default=None)

SYSTEM_ACTOR = "system"


@contextmanager
def audit_actor(actor: Actor) -> Iterator[None]:
    """Attribute every audited change made inside the block to `actor`: a string such as
    "command:create_api_key" or "catalog:/etc/gw/catalog.toml", or a callable evaluated when a
    change is recorded (the middleware passes one: DRF authenticates after middleware runs)."""
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


def audit_actor_current() -> str:
    actor = _actor.get()
    if actor is None:
        return SYSTEM_ACTOR
    value = actor() if callable(actor) else actor
    return (value or SYSTEM_ACTOR)[:200]
