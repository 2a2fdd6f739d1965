"""Maps across machines: run a map's items on Ray workers, with the journal kept on the driver.

``await agent.map_async(items, prompt, executor="ray")`` (or ``executor=RayExecutor(...)``) sends the
items in shards to Ray actors. Each actor rebuilds the agent from an :class:`AgentSpec` (model settings,
system prompt, tools, output type, mode, limits; pickled with cloudpickle, which Ray uses), runs its
shard's items on its own event loop under the agent's adaptive limiter (so each worker finds its own
pace against the API), and streams each finished item back as it finishes (a streaming generator). The
driver writes the journal, emits the events (the panel) and builds the result exactly as for a local
map (see :class:`~menglong_magic.maps.run.MapJob`).

Secrets never travel through Ray. Neither task arguments nor ``runtime_env`` carry them: Ray's
runtime-env agent logs every ``env_vars`` value verbatim at INFO (measured with Ray 2.60:
``runtime_env_agent.log`` shows ``Creating runtime env: {"env_vars": {...}}``). A worker reads the API key
(and secret header values) from its *own* environment: the spec only names the variable
(``OPENAI_API_KEY``, or ``MENGLONG_RAY_SECRET_<hash>`` for a key given in code). A local Ray started by the
executor inherits those variables from this process when it starts (the executor restarts its own Ray
if a later map needs a secret it was not started with); on a cluster the operator puts ``OPENAI_API_KEY``
in the nodes' environment (a Kubernetes secret, ``ray start`` under that variable).

Cluster: ``address=`` or ``RAY_ADDRESS`` connects to a running Ray, which is left running afterwards;
otherwise a local Ray sized to this machine is started, and stopped when the executor is closed or the
process ends. Faults: a worker that dies mid-shard (``RayActorError``) has the unfinished items of its
shards queued again and run by the other workers or a replacement; items it already reported are never
requested again.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import hashlib
import math
import os
import sys
import sysconfig
import tempfile
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..agent.settings import ChatMode, RunSettings
from ..models.offline import OfflineModel
from ..models.openai_compat import NO_API_KEY, OpenAIModel, redact
from ..tools.base import Tool
from .run import ItemOutcome, MapItem, MapJob, run_admitted, run_item, usage_from_json, usage_to_json

if TYPE_CHECKING:
    from ..agent.chat_agent import ChatAgent

#: Where a secret given in code (not from the environment) is put for the Ray processes this executor starts.
SECRET_ENV_PREFIX = "MENGLONG_RAY_SECRET_"


class RayExecutorError(RuntimeError):
    """The Ray map could not run (no workers left, a worker could not build the agent, ...)."""


# ---------------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class ModelSpec:
    """How a worker rebuilds the model: its class and constructor settings, never a secret.

    ``api_key_env`` / ``header_envs`` name the environment variables holding the key / header values on the
    worker (None: no key, a keyless local server)."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    api_key_env: str | None = None
    header_envs: dict[str, str] = field(default_factory=dict)

    def build(self) -> Any:
        if self.kind == "offline":
            return OfflineModel(**self.options)
        if self.kind != "openai":
            raise RayExecutorError(f"cannot rebuild a {self.kind!r} model on a Ray worker")
        api_key = None
        if self.api_key_env is not None:
            api_key = os.environ.get(self.api_key_env)
            if not api_key:
                raise RayExecutorError(f"the API key is not in this Ray worker's environment (${self.api_key_env}); "
                                       f"set it on every node (see menglong_magic.maps.ray)")
        headers = {}
        for name, env in self.header_envs.items():
            value = os.environ.get(env)
            if value is None:
                raise RayExecutorError(f"header {name!r} is not in this Ray worker's environment (${env})")
            headers[name] = value
        options = dict(self.options)
        request_model = options.pop("request_model", None)
        model = OpenAIModel(api_key=api_key or NO_API_KEY, default_headers=headers or None, **options)
        if request_model:
            model.request_model = request_model
        return model


def _secret_env(value: str) -> str:
    return SECRET_ENV_PREFIX + hashlib.sha256(value.encode()).hexdigest()[:16].upper()


def model_spec(model: Any) -> tuple[ModelSpec, dict[str, str]]:
    """The model's spec and the secrets it needs in the workers' environment (variable -> value)."""
    if isinstance(model, OfflineModel):
        return ModelSpec("offline", {"delay": model.delay}), {}
    if type(model) is not OpenAIModel:  # LocalModel, Replay, ScriptedModel, custom: not rebuildable elsewhere
        raise RayExecutorError(
            f"{type(model).__name__} cannot run on Ray workers: use an OpenAIModel (any OpenAI-compatible "
            f"endpoint the workers can reach) or the offline model")
    options, key, headers = model.rebuild_options()
    secrets: dict[str, str] = {}
    key_env = None
    if key is not None:
        value = key.get()
        key_env = "OPENAI_API_KEY" if os.environ.get("OPENAI_API_KEY") == value else _secret_env(value)
        secrets[key_env] = value
    header_envs = {}
    for name, secret in headers.items():
        header_envs[name] = env = _secret_env(secret.get())
        secrets[env] = secret.get()
    return ModelSpec("openai", options, key_env, header_envs), secrets


@dataclass(frozen=True)
class ToolSpec:
    function: Callable[..., Any]
    name: str
    description: str
    requires_approval: bool


@dataclass(frozen=True)
class AgentSpec:
    """Everything a worker needs to rebuild the map's agent and run settings; picklable, secret-free."""

    model: ModelSpec
    system: str | None
    mode: str
    tools: tuple[ToolSpec, ...]
    max_iterations: int
    timeout: float | None
    model_settings: dict[str, Any]
    request_timeout: float | None
    max_retries: int | None
    output_type: Any
    output_retries: int
    usage_limits: Any
    approve: Any
    approve_all: bool
    approval_timeout: float | None
    max_concurrency: int | str
    #: The agent's class (ChatAgent or a subclass), carried by reference: maps sit below the facade and
    #: never import it.
    agent_class: type[ChatAgent]

    @classmethod
    def of(cls, settings: RunSettings, max_concurrency: int | str | None = "auto", *,
           agent_class: type[ChatAgent]) -> tuple[AgentSpec, dict[str, str]]:
        """The spec of a map's settings, and the secrets its model needs (never part of the spec)."""
        if settings.uses_tools and settings.toolsets:
            raise RayExecutorError("MCP servers (toolsets) cannot travel to Ray workers; pass their tools as "
                                   "functions or use the local executor")
        tools = []
        for t in settings.tools.values() if settings.uses_tools else ():
            if type(t) is not Tool:
                raise RayExecutorError(f"tool {t.name!r} ({type(t).__name__}) cannot travel to Ray workers")
            tools.append(ToolSpec(t.function, t.name, t.description, t.requires_approval))
        model, secrets = model_spec(settings.model)
        output = settings.output
        spec = cls(
            model=model, system=settings.system, mode=settings.mode.value, tools=tuple(tools),
            max_iterations=settings.max_iterations, timeout=settings.timeout,
            model_settings=dict(settings.model_settings), request_timeout=settings.request_timeout,
            max_retries=settings.max_retries, output_type=None if output is None else output.output_type,
            output_retries=settings.output_retries, usage_limits=settings.usage_limits, approve=settings.approve,
            approve_all=settings.approve_all, approval_timeout=settings.approval_timeout,
            max_concurrency=max_concurrency if max_concurrency not in (None, "auto") else "auto",
            agent_class=agent_class)
        return spec, secrets

    def build(self) -> tuple[ChatAgent, RunSettings]:
        """The agent and the run settings on a worker."""
        agent = self.agent_class(model=self.model.build(), system=self.system, mode=ChatMode(self.mode),
                          max_iterations=self.max_iterations, name="ray-worker",
                          max_concurrency=self.max_concurrency if isinstance(self.max_concurrency, int) else "auto")
        tools = {t.name: Tool(t.function, name=t.name, description=t.description,
                              requires_approval=t.requires_approval) for t in self.tools}
        # Every run option (agent/options.py) travels in the spec; the matrix test checks none is missing.
        settings = agent.settings(model=None, system=self.system, tools=tools, mode=self.mode,
                                  max_iterations=self.max_iterations, timeout=self.timeout,
                                  request_timeout=self.request_timeout, max_retries=self.max_retries,
                                  approve=self.approve, approve_all=self.approve_all,
                                  approval_timeout=self.approval_timeout, output_type=self.output_type,
                                  usage_limits=self.usage_limits, model_settings=self.model_settings)
        return agent, dataclasses.replace(settings, output_retries=self.output_retries, stream=False)


def _installed(module_name: str) -> bool:
    """True when a module is part of an installed distribution or the standard library (importable as such on
    a worker with the same environment); False for modules that live next to a notebook or a test."""
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if module_name == "__main__" or path is None:
        return module_name != "__main__"
    top = module_name.partition(".")[0]
    if top in ("menglong_magic",):
        return True
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    real = os.path.realpath(path)
    return any(real.startswith(os.path.realpath(r) + os.sep) for r in roots)


def _pickle_by_value(spec: AgentSpec) -> None:
    """Ship tools/output types defined in local modules (a notebook's helpers.py, a test) by value."""
    from ray import cloudpickle

    objects = [t.function for t in spec.tools] + [spec.output_type, spec.approve]
    for obj in objects:
        name = getattr(obj, "__module__", None)
        if name and name in sys.modules and not _installed(name) and name != "__main__":
            with contextlib.suppress(ValueError):
                cloudpickle.register_pickle_by_value(sys.modules[name])


# ---------------------------------------------------------------------------------------------- the worker
class MapWorker:
    """A Ray actor (async): builds the agent once, runs shards, streams outcomes back as they finish."""

    def __init__(self, spec_blob: bytes):
        from ray import cloudpickle

        spec: AgentSpec = cloudpickle.loads(spec_blob)
        self._spec = spec
        self._agent, self._settings = spec.build()
        self._pid = os.getpid()

    def ready(self) -> int:
        return self._pid

    async def run_shard(self, shard_id: str, items: list[tuple[str, str]]) -> AsyncIterator[list[dict[str, Any]]]:
        """Run ``(key, prompt)`` items concurrently; yield lists of messages ``{"key", "event", ...}``: an
        item's start, then its outcome. Several messages that are ready together travel in one list."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def one(entry: tuple[str, str]) -> None:
            key, prompt = entry
            queue.put_nowait({"key": key, "event": "started"})
            try:
                outcome = await run_item(self._agent, self._settings, prompt, f"{shard_id}-{key[:8]}")
            except Exception as exc:  # reported as the item's error
                outcome = ItemOutcome("error", error=redact(f"{type(exc).__name__}: {exc}"), stop_reason="error")
            queue.put_nowait({"key": key, "event": "finished", "status": outcome.status, "data": outcome.data,
                              "text": outcome.text, "error": outcome.error, "stop_reason": outcome.stop_reason,
                              "usage": usage_to_json(outcome.usage), "duration": outcome.duration})

        async def run_all() -> None:
            try:
                await run_admitted(self._agent, items, one, self._spec.max_concurrency)
            finally:
                queue.put_nowait(None)

        runner = asyncio.ensure_future(run_all())
        try:
            ended = False
            while not ended:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                ended = batch[-1] is None
                messages = [m for m in batch if m is not None]
                if messages:
                    yield messages
            await runner
        finally:
            runner.cancel()


# ---------------------------------------------------------------------------------------------- the cluster
_owned_lock = threading.Lock()
_owned: dict[str, Any] = {"started": False, "env": {}}


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _start_local_ray(ray: Any, num_cpus: int | None, secrets: dict[str, str], temp_dir: str | None) -> None:
    """Start a local Ray whose processes inherit ``secrets`` as environment variables (only for its start)."""
    added = {k: v for k, v in secrets.items() if os.environ.get(k) != v}
    # A busy 2-core machine can take > 15 s to start Ray's agents; the raylet's own wait is fixed, so give
    # Ray's Python side room and retry once (the second start finds its modules in the page cache).
    tuning = {"RAY_raylet_start_wait_time_s": "120", "RAY_agent_register_timeout_ms": "120000",
              "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in (*added, *tuning)}
    os.environ.update(added)
    for k, v in tuning.items():
        os.environ.setdefault(k, v)
    try:
        last: Exception | None = None
        for _attempt in range(3):
            try:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         _temp_dir=temp_dir or os.path.join(tempfile.gettempdir(), "menglong_ray"))
                break
            except Exception as exc:  # Ray raises a plain Exception on a slow start
                last = exc
                with contextlib.suppress(Exception):
                    ray.shutdown()
        else:
            raise RayExecutorError(f"could not start a local Ray: {last}") from last
        _owned["started"] = True
        # What Ray's processes inherited (as digests): a later map needing another secret restarts our Ray.
        _owned["env"] = {k: _digest(v) for k, v in os.environ.items()}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stop_owned_ray() -> None:
    with _owned_lock:
        if _owned["started"]:
            import ray

            with contextlib.suppress(Exception):
                ray.shutdown()
            _owned["started"] = False
            _owned["env"] = {}


atexit.register(_stop_owned_ray)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, secrets: dict[str, str] | None = None,
               temp_dir: str | None = None) -> bool:
    """Connect to Ray: an already initialised one, ``address``/``RAY_ADDRESS``, else a local Ray this module
    starts (sized to the machine, or ``num_cpus``). Returns True when this call started (or restarted) it."""
    try:
        import ray
    except ImportError:
        raise ImportError("executor='ray' needs Ray: pip install 'menglong-magic[ray]'") from None
    secrets = secrets or {}
    with _owned_lock:
        if ray.is_initialized():
            if not _owned["started"]:
                return False
            if all(_owned["env"].get(k) == _digest(v) for k, v in secrets.items()):
                return False
            ray.shutdown()  # our own Ray was started without a secret this map needs: start it again
            _owned["started"] = False
            _start_local_ray(ray, num_cpus, secrets, temp_dir)
            return True
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            ray.init(address=address, log_to_driver=False)
            return False
        _start_local_ray(ray, num_cpus, secrets, temp_dir)
        return True


# ---------------------------------------------------------------------------------------------- the executor
class RayExecutor:
    """Runs a map's items on Ray actors; the journal, events and result stay on the driver.

    ``address``: a Ray cluster (default ``RAY_ADDRESS``, else a local Ray sized to this machine, or to
    ``num_cpus``). ``num_workers``: actors (default: the cluster's CPUs divided by the CPUs per worker).
    ``shard_size``: items per request to a worker (default: about 4 shards per worker, at most 64 items).
    ``resources``: Ray resources per worker (default ``{"num_cpus": 1}``). ``max_concurrency_per_worker``:
    ``"auto"`` (each worker's adaptive limiter) or a fixed bound of requests in flight per worker (the
    map's own ``max_concurrency``, when an integer, is used if this is left at None). ``shards_in_flight``:
    shards a worker holds at once (so it never waits for the driver between shards). ``max_worker_restarts``:
    replacements of dead workers before the map fails. ``runtime_env``: Ray's runtime env for the workers
    (working_dir, pip, ...; never put secrets there: Ray logs it).
    """

    def __init__(self, address: str | None = None, *, num_workers: int | None = None, shard_size: int | None = None,
                 resources: dict[str, Any] | None = None, max_concurrency_per_worker: int | str | None = None,
                 shards_in_flight: int = 2, max_worker_restarts: int = 4, num_cpus: int | None = None,
                 runtime_env: dict[str, Any] | None = None, temp_dir: str | None = None):
        if runtime_env and "env_vars" in runtime_env and any(
                k.endswith(("KEY", "TOKEN", "SECRET")) for k in runtime_env["env_vars"]):
            raise ValueError("runtime_env env_vars are logged by Ray: do not pass keys there")
        self.address = address
        self.num_workers = num_workers
        self.shard_size = shard_size
        self.resources = dict(resources) if resources is not None else {"num_cpus": 1}
        self.max_concurrency_per_worker = max_concurrency_per_worker
        self.shards_in_flight = max(1, shards_in_flight)
        self.max_worker_restarts = max_worker_restarts
        self.num_cpus = num_cpus
        self.runtime_env = runtime_env
        self.temp_dir = temp_dir
        #: The live worker actors of the running map (for inspection, and for fault tests).
        self.workers: list[Any] = []
        #: What the last map sent to Ray (for audits): ("actor", spec_blob) and ("shard", shard_id, items).
        self.sent: list[tuple[Any, ...]] = []
        self.record_sent = False
        self.owns_ray = False
        #: Worker deaths seen, and items queued again because their worker died before reporting them.
        self.worker_failures = 0
        self.requeued = 0
        #: Idle workers kept between maps with the same spec (starting a worker process takes seconds).
        self.keep_workers = True
        self._idle: list[Any] = []
        self._idle_spec: str | None = None

    def __repr__(self) -> str:
        where = self.address or os.environ.get("RAY_ADDRESS") or "local"
        return f"RayExecutor({where!r}, num_workers={self.num_workers}, shard_size={self.shard_size})"

    def close(self) -> None:
        """Stop the idle workers, and the local Ray this executor started (a Ray it connected to keeps running)."""
        self._drop_idle()
        if self.owns_ray:
            _stop_owned_ray()
            self.owns_ray = False

    def _drop_idle(self) -> None:
        idle, self._idle, self._idle_spec = self._idle, [], None
        if idle:
            import ray

            for actor in idle:
                with contextlib.suppress(Exception):
                    ray.kill(actor)

    def _worker_count(self, ray: Any) -> int:
        if self.num_workers is not None:
            return max(1, self.num_workers)
        cpus = float(ray.cluster_resources().get("CPU", 1))
        per = float(self.resources.get("num_cpus", 1) or 0)
        return max(1, int(cpus // per) if per > 0 else int(cpus))

    async def run(self, job: MapJob) -> None:
        if not job.items:
            return
        per_worker = self.max_concurrency_per_worker
        if per_worker is None:
            per_worker = job.max_concurrency if isinstance(job.max_concurrency, int) else "auto"
        spec, secrets = AgentSpec.of(job.settings, per_worker, agent_class=type(job.agent))
        _pickle_by_value(spec)
        from ray import cloudpickle

        blob = cloudpickle.dumps(spec)
        spec_hash = hashlib.sha256(blob).hexdigest()
        if self._idle_spec != spec_hash:
            self._drop_idle()
        loop = asyncio.get_running_loop()
        self.owns_ray = await loop.run_in_executor(
            None, lambda: ensure_ray(self.address, self.num_cpus, secrets, self.temp_dir)) or self.owns_ray
        import ray

        n_workers = min(self._worker_count(ray), len(job.items))
        size = self.shard_size or max(1, min(64, math.ceil(len(job.items) / (n_workers * 4))))
        by_key = {item.key: item for item in job.items}
        queue: deque[list[MapItem]] = deque(job.items[i:i + size] for i in range(0, len(job.items), size))
        remaining = set(by_key)
        changed = asyncio.Event()
        shard_ids = iter(range(1 << 62))
        restarts = [0]
        failure: list[BaseException] = []
        self.sent = [("actor", blob)] if self.record_sent else []
        self.workers = []
        self.worker_failures = self.requeued = 0
        actor_class = ray.remote(MapWorker).options(
            **self.resources, max_restarts=0, max_concurrency=max(8, 2 * self.shards_in_flight),
            **({"runtime_env": self.runtime_env} if self.runtime_env else {}))

        async def new_actor() -> Any:
            actor = actor_class.remote(blob)
            try:
                await actor.ready.remote()
            except ray.exceptions.RayActorError as exc:
                raise RayExecutorError(f"a Ray worker could not build the agent: {redact(str(exc))}") from None
            return actor

        async def stream(actor: Any) -> None:
            """Take shards from the queue and run them on ``actor`` until none are left."""
            while remaining and not failure:
                if not queue:
                    changed.clear()
                    await changed.wait()  # another worker may die and give its shard back
                    continue
                shard = queue.popleft()
                shard_id = f"{job.batch_id}-s{next(shard_ids)}"
                payload = [(item.key, item.prompt) for item in shard]
                if self.record_sent:
                    self.sent.append(("shard", shard_id, payload))
                unreported = {item.key for item in shard}
                try:
                    async for ref in actor.run_shard.options(num_returns="streaming").remote(shard_id, payload):
                        for message in await ref:
                            item = by_key[message["key"]]
                            if message["event"] == "started":
                                job.started(item)
                                continue
                            unreported.discard(item.key)
                            remaining.discard(item.key)
                            outcome = ItemOutcome(
                                message["status"], data=message["data"], text=message["text"],
                                error=message["error"], stop_reason=message["stop_reason"],
                                usage=usage_from_json(message["usage"]), duration=message["duration"])
                            try:
                                job.finished(item, outcome)
                            except BaseException as exc:  # return_exceptions=False: stop the map
                                failure.append(exc)
                                changed.set()
                                raise
                finally:
                    if unreported:  # the worker died (or the map stopped) before reporting these
                        back = [item for item in shard if item.key in unreported]
                        queue.appendleft(back)
                        self.requeued += len(back)
                    if not remaining:
                        changed.set()
            changed.set()

        async def slot() -> None:
            """One worker's life: an actor and its streams; a dead actor is replaced (up to the restarts)."""
            while remaining and not failure:
                actor = self._idle.pop() if self._idle else await new_actor()
                if actor not in self.workers:
                    self.workers.append(actor)
                results = await asyncio.gather(*(stream(actor) for _ in range(self.shards_in_flight)),
                                               return_exceptions=True)
                died = [r for r in results if isinstance(r, ray.exceptions.RayActorError)]
                other = [r for r in results if isinstance(r, BaseException) and r not in died]
                if other:
                    raise other[0]
                if not died:
                    return
                with contextlib.suppress(ValueError):
                    self.workers.remove(actor)
                self.worker_failures += 1
                changed.set()
                if restarts[0] >= self.max_worker_restarts:
                    return  # the other workers take the queue; if none is left, the map fails below
                restarts[0] += 1

        slots = [asyncio.ensure_future(slot()) for _ in range(n_workers)]
        succeeded = False
        try:
            outcomes = await asyncio.gather(*slots, return_exceptions=True)
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            if failure:
                raise failure[0]
            if errors:
                raise errors[0]
            if remaining:
                raise RayExecutorError(f"{len(remaining)} items were not run: every Ray worker died "
                                       f"({self.worker_failures} failures, {restarts[0]} replacements)")
            succeeded = True
        finally:
            for task in slots:
                task.cancel()
            await asyncio.gather(*slots, return_exceptions=True)
            if succeeded and self.keep_workers:  # idle and healthy: the next map with this spec reuses them
                self._idle = [*self._idle, *self.workers]
                self._idle_spec = spec_hash
            else:
                for actor in [*self.workers, *self._idle]:
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                self._idle, self._idle_spec = [], None
            self.workers = []


_default: RayExecutor | None = None


def default_executor() -> RayExecutor:
    """The executor behind ``executor="ray"`` (one per process, so its idle workers serve the next map)."""
    global _default
    if _default is None:
        _default = RayExecutor()
    return _default


def local_ray_running() -> bool:
    """True while a Ray started by this module is running in this process."""
    return bool(_owned["started"])

