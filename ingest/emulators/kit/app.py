"""The one app factory every platform emulator is built with.

A platform describes itself once, in an ``EmulatorApp``: how its envelope words an error, how it
authenticates a request, its routes, its ``/_emulator/files`` hook, and which requests are uploads.
Its config subclasses ``EmulatorConfig`` (the fault fields) and its state ``EmulatorState`` (which
opens the platform's store). ``build_app`` then wires the skeleton the same way for all of them:

- one middleware that counts the request (``/_emulator/stats``), injects faults, authenticates, and
  renders every failure (``ApiError``, aiohttp's own 404/405/413, a lost connection, a bug) in the
  platform's envelope; the test hooks (``/_emulator/...``) are neither counted, faulted nor
  authenticated. One middleware rather than four: a request pays one layer, not four;
- the test hooks ``GET /_emulator/stats``, ``GET /_emulator/files`` (stored content by path) and, when the
  platform has it, ``GET /_emulator/documents`` (one entry per document, every version of a file apart);
- the store opened (in a worker thread) on startup, and closed on cleanup, even when cancelled;
- the ``stalls.StallGuard`` that ``server.serve_in_background`` enforces the config's stall limits with.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import anyio
from aiohttp import web
from aiohttp.typedefs import Handler

from ingest.emulators.kit.common import ApiError
from ingest.emulators.kit.faults import TEST_HOOK_PREFIX, Fault, FaultInjector, fault_settings
from ingest.emulators.kit.stalls import STALL_GUARD, StallGuard, StallLimits
from ingest.emulators.kit.stats import RequestCounter

__all__ = ["EmulatorApp", "EmulatorConfig", "EmulatorState", "build_app"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EmulatorConfig:
    """The fault settings every emulator config has; a platform's config subclasses it.

    Keyword-only, so the platform's own fields (``data_dir``, its credentials, …) come first.
    """

    data_dir: Path
    #: Added to every request, in milliseconds.
    latency_ms: int = 0
    #: Fraction of requests answered with a server error.
    error_rate: float = 0.0
    #: Requests per second; excess requests get 429 with ``Retry-After``.
    rate_limit: float | None = None
    #: Fraction of uploads whose connection is dropped mid-body.
    reset_rate: float = 0.0
    #: Seed of the fault draws (and of the platform's own failure draws).
    seed: int | None = None
    #: Seconds a client may take to send a request's headers (``stalls.StallGuard``).
    header_timeout: float = 10.0
    #: Seconds a request body may pause while the server waits for it.
    body_idle_timeout: float = 30.0
    #: Connections that may be slow to send their headers at once; further slow ones are closed.
    max_slow_connections: int = 256

    def problems(self) -> list[str]:
        """Every invalid setting, one sentence each (empty when the config is usable).

        A platform's config extends the list with its own fields' problems.
        """
        found = [
            f"{name} must be between 0 and 1, got {value}"
            for name, value in (("error_rate", self.error_rate), ("reset_rate", self.reset_rate))
            if not 0.0 <= value <= 1.0
        ]
        if self.latency_ms < 0:
            found.append("latency_ms must not be negative")
        if self.rate_limit is not None and not self.rate_limit > 0:
            found.append(f"rate_limit must be positive, got {self.rate_limit}")
        found += [
            f"{name} must be positive, got {value}"
            for name, value in (
                ("header_timeout", self.header_timeout),
                ("body_idle_timeout", self.body_idle_timeout),
                ("max_slow_connections", self.max_slow_connections),
            )
            if not value > 0
        ]
        return found


class _Store(Protocol):
    def close(self) -> None: ...


ConfigT = TypeVar("ConfigT", bound=EmulatorConfig)
StoreT = TypeVar("StoreT", bound=_Store)


@dataclass(kw_only=True)
class EmulatorState(Generic[ConfigT, StoreT]):
    """The running emulator's mutable state, at ``app[<platform>_STATE]``; a platform's state subclasses it.

    Tests may change ``faults.settings`` on a running app, and read ``requests``.
    """

    config: ConfigT
    faults: FaultInjector
    #: Requests received per ``"<METHOD> <route>"`` (test hooks excluded).
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    _store: StoreT | None = None

    @property
    def store(self) -> StoreT:
        if self._store is None:
            raise RuntimeError("an emulator's store is only open while its app runs")
        return self._store

    def open_store(self) -> StoreT:
        """Open the platform's store (runs in a worker thread at startup; the kit closes it)."""
        raise NotImplementedError

    def running(self, app: web.Application) -> AbstractAsyncContextManager[None]:
        """What else lives as long as the app, entered once the store is open (background workers, …)."""
        return nullcontext()


StateT = TypeVar("StateT", bound=EmulatorState[Any, Any])


@dataclass(frozen=True, kw_only=True)
class EmulatorApp(Generic[ConfigT, StateT]):
    """What a platform supplies; ``build_app`` does the rest."""

    #: The platform's name as log lines and config errors say it ("MOI").
    name: str
    state_key: web.AppKey[StateT]
    new_state: Callable[[ConfigT, FaultInjector], StateT]
    #: ``ApiError`` -> the platform's documented error envelope, with ``http_status`` and ``headers``.
    render_error: Callable[[web.Request, ApiError], web.StreamResponse]
    #: A request refused outside the handlers: aiohttp's 404/405/413, a lost connection (status, sentence).
    refused: Callable[[int, str], ApiError]
    #: An HTTP 500, injected or a bug; the argument says which ("injected fault", an exception's name).
    server_error: Callable[[str], ApiError]
    #: The answer to a request over ``--rate-limit`` (HTTP 429; the kit adds ``Retry-After``).
    rate_limited: Callable[[], ApiError]
    #: Raises ``ApiError`` unless the request carries valid credentials.
    authenticate: Callable[[web.Request], Awaitable[None]]
    #: Adds the platform's API routes (and any extra test hooks).
    add_routes: Callable[[web.Application, StateT], None]
    #: ``GET /_emulator/files``: what the emulator has stored, not enveloped.
    emulator_files: Handler
    #: The uploads: the requests an injected connection reset may hit.
    resettable: Callable[[web.Request], bool]
    #: ``GET /_emulator/documents``: one entry per document the platform holds, not enveloped, each
    #: ``{id, name, folder, md5, size, created, state}`` plus the platform's own fields. Unlike
    #: ``/_emulator/files`` (by path), it shows a stale version and same-name files apart.
    emulator_documents: Handler | None = None
    #: Paths answered without authentication (besides the test hooks).
    public_paths: frozenset[str] = frozenset()

    def fault_response(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        error = self.rate_limited() if fault is Fault.RATE_LIMITED else self.server_error("injected fault")
        return self.render_error(request, error)


def build_app(spec: EmulatorApp[ConfigT, StateT], config: ConfigT) -> web.Application:
    """The platform's emulator as an aiohttp application (run it with ``ingest.emulators.kit.server``)."""
    problems = config.problems()
    if problems:
        raise ValueError(f"invalid {spec.name} emulator config: " + "; ".join(problems))
    faults = FaultInjector(fault_settings(config), spec.fault_response, seed=config.seed, resettable=spec.resettable)
    state = spec.new_state(config, faults)
    counter = RequestCounter(state.requests)
    guard = StallGuard(StallLimits(config.header_timeout, config.body_idle_timeout, config.max_slow_connections))
    app = web.Application(middlewares=[_middleware(spec, faults, counter, guard)])
    app[spec.state_key] = state
    app[STALL_GUARD] = guard
    app.cleanup_ctx.append(_lifetime(spec.state_key))
    spec.add_routes(app, state)
    app.router.add_get("/_emulator/files", spec.emulator_files, allow_head=False)
    if spec.emulator_documents is not None:
        app.router.add_get("/_emulator/documents", spec.emulator_documents, allow_head=False)
    app.router.add_get("/_emulator/stats", counter.stats, allow_head=False)
    return app


def _middleware(spec: EmulatorApp[Any, Any], faults: FaultInjector, counter: RequestCounter, guard: StallGuard) -> Any:
    render, public, authenticate = spec.render_error, spec.public_paths, spec.authenticate

    @web.middleware
    async def emulator(request: web.Request, handler: Handler) -> web.StreamResponse:
        guard.request_started(request)
        try:
            return await _handle(request, handler)
        finally:
            guard.request_finished(request)

    async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
        hook = request.path.startswith(TEST_HOOK_PREFIX)
        try:
            if not hook:
                counter.count(request)
                faulted = await faults.inject(request)
                if faulted is not None:
                    if faulted.status == 429:
                        counter.count_rate_limited()
                    return faulted
                if request.path not in public:
                    await authenticate(request)
            return await handler(request)
        except ApiError as exc:
            return render(request, exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return render(request, _http_error(spec, request, exc))
        except ConnectionError:
            # The client went away mid-body. Answering (into a closed transport) lets aiohttp treat it as the
            # ordinary disconnect it is, instead of logging a traceback for every aborted upload.
            log.debug("%s emulator: client disconnected during %s %s", spec.name, request.method, request.path)
            return render(request, spec.refused(400, "the connection was lost before the request was complete"))
        except Exception as exc:
            log.exception("%s emulator: unhandled error on %s %s", spec.name, request.method, request.path)
            return render(request, spec.server_error(type(exc).__name__))

    return emulator


def _http_error(spec: EmulatorApp[Any, Any], request: web.Request, exc: web.HTTPException) -> ApiError:
    """aiohttp's own refusal (no such route, wrong method, body too large) in the platform's words."""
    allowed = exc.headers.get("Allow")
    if exc.status == 404:
        sentence = f"no such API: {request.method} {request.path}"
    elif exc.status == 405:
        sentence = f"method {request.method} is not allowed on {request.path}; allowed: {allowed or ''}"
    else:
        sentence = exc.reason
    error = spec.refused(exc.status, sentence)
    if allowed is not None:
        error.headers["Allow"] = allowed
    return error


def _lifetime(key: web.AppKey[StateT]) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        state = app[key]
        store = await anyio.to_thread.run_sync(state.open_store)
        state._store = store
        try:
            async with state.running(app):
                yield
        finally:
            state._store = None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(store.close)

    return lifetime
