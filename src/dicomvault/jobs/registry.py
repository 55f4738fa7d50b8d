"""The one registry of job handlers (`@handler`) and event subscribers (`@on_event`).

Handlers register when their module is imported; the worker imports the built-in
handler modules (`BUILTIN_MODULES`) and those named by `Settings.job_modules`
before it starts, so registering never depends on what else happened to be
imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicomvault.archive import Archive

__all__ = [
    "BUILTIN_MODULES",
    "EVENT_JOB_PREFIX",
    "Handler",
    "Periodic",
    "PermanentFailure",
    "Reaction",
    "RunLater",
    "Subscriber",
    "handler",
    "handlers",
    "load_modules",
    "on_event",
    "periodic",
    "periodics",
    "subscribers",
]

Handler = Callable[["Archive", dict[str, Any]], None]
Reaction = Callable[["Archive", dict[str, Any]], None]

# Modules of this package that register handlers and subscribers.
BUILTIN_MODULES: tuple[str, ...] = (
    "dicomvault.pipeline.study_ready",
    "dicomvault.pipeline.inbox",
    "dicomvault.pipeline.inbox_sqs",
    "dicomvault.pipeline.reconcile",
    "dicomvault.dimse.routing",
    "dicomvault.dimse.commitment",
)

# A subscriber's event that failed every attempt becomes a dead job of this kind + name,
# so `dicomvault jobs retry` replays it like any other job.
EVENT_JOB_PREFIX = "event:"


@dataclass(frozen=True, slots=True)
class Periodic:
    name: str
    every: Callable[[Any], float | None]  # settings -> seconds between runs (None: off)
    run: Handler


class RunLater(Exception):
    """Raised by a handler: not yet; run this job again at `at` (not counted as a failure)."""

    def __init__(self, at: datetime) -> None:
        super().__init__(f"postponed to {at.isoformat()}")
        self.at = at


class PermanentFailure(Exception):
    """Raised by a handler: retrying cannot help; the job goes to the dead letter at once."""


Reactions = Callable[["Archive", list[dict[str, Any]]], None]


@dataclass(frozen=True, slots=True)
class Subscriber:
    name: str
    kind: str  # an event kind, or a pattern such as "instance.*"
    react: Reaction
    # Optional: the same reaction for many events at once (one transaction for a batch
    # instead of one per event); a failing batch is retried event by event with `react`.
    react_many: Reactions | None = None

    def wants(self, event_kind: str) -> bool:
        return fnmatchcase(event_kind, self.kind)


_handlers: dict[str, Handler] = {}
_subscribers: dict[str, Subscriber] = {}
_periodic: dict[str, Periodic] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    """Register `run(archive, payload)` as the handler of jobs of `kind`.

    It must be idempotent: a job can run twice (its worker died after the work but
    before recording it). Raise to retry with backoff; raise PermanentFailure to
    dead-letter the job at once.
    """
    if kind.startswith(EVENT_JOB_PREFIX):
        raise ValueError(f"job kinds starting with {EVENT_JOB_PREFIX!r} are reserved")

    def register(run: Handler) -> Handler:
        existing = _handlers.get(kind)
        if existing is not None and existing is not run:
            raise ValueError(f"job kind {kind!r} already has a handler")
        _handlers[kind] = run
        return run

    return register


def on_event(
    kind: str, *, name: str, batch: Reactions | None = None
) -> Callable[[Reaction], Reaction]:
    """Register `react(archive, event)` to run at least once for every event of `kind`.

    Events reach one subscriber in `seq` order, one at a time (a cursor per `name`);
    `kind` may be a pattern (`instance.*`). It must be idempotent. A reaction that
    keeps failing holds its subscriber back (with backoff) until its attempts run
    out; then the event goes to the dead letter as a job `event:<name>` and the
    subscriber moves on. With `batch`, the events of a batch go to `batch(archive,
    events)` in one call first (it must have the same effect as `react` on each).
    """

    def register(react: Reaction) -> Reaction:
        existing = _subscribers.get(name)
        if existing is not None and existing.react is not react:
            raise ValueError(f"event subscriber {name!r} is already registered")
        _subscribers[name] = Subscriber(name=name, kind=kind, react=react, react_many=batch)
        return react

    return register


def periodic(name: str, *, every: Callable[[Any], float | None]) -> Callable[[Handler], Handler]:
    """Register `run(archive, payload)` to run about every `every(settings)` seconds.

    It is a job of kind `name` like any other (retried, dead-lettered); the workers
    keep one queued at a time, whatever their number, so it never runs twice at once,
    and delete it once done (no row per tick piles up). `every` returning None turns
    the task off for those settings.
    """

    def register(run: Handler) -> Handler:
        handler(name)(run)
        _periodic[name] = Periodic(name=name, every=every, run=run)
        return run

    return register


def periodics() -> dict[str, Periodic]:
    return dict(_periodic)


def handlers() -> dict[str, Handler]:
    return dict(_handlers)


def subscribers() -> dict[str, Subscriber]:
    return dict(_subscribers)


def load_modules(extra: Iterable[str] = ()) -> None:
    """Import the modules that register handlers (built-in ones, then `extra`)."""
    for module in (*BUILTIN_MODULES, *extra):
        importlib.import_module(module)
