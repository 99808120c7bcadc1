"""Ray, opt-in: joining a cluster and running work on a pool of fault-tolerant actors.

Invariant: nothing imports Ray unless the user asked for `--ray` (this module imports it only inside
`connect`); without the flag every command runs in-process. The API, for commands that scale out:

    options = RayOptions.from_cli(ray_address, ray_actors, ray_gpus_per_actor)   # None without --ray
    with connect(options.address) as ray:                      # always an explicit address
        actors = start_actors(MyActor, options.actor_count(), args, options.gpus_per_actor)
        results = map_ordered(actors, "method", items, on_result=lambda i, r: ...)

- `--ray` alone means `$RAY_ADDRESS` when set, else a private local instance (`address="local"`,
  `num_cpus` and a small object store set explicitly: never a silent join of whatever cluster runs);
  `--ray ADDRESS` joins that cluster. A cluster with token authentication (RAY_AUTH_MODE=token, the
  default of recent `ray start`) gets the token Ray finds (`RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or
  ~/.ray/auth_token): a refused driver retries once in token mode; a refusal after that is one line.
- Workers of a cluster do not inherit the driver's environment: `worker_environment` (PYTHONPATH with
  this snncc first, every `SNNCC_*` variable, the native op library's path) goes to them as Ray's
  `runtime_env`. A private local instance gets it by inheritance instead (its raylet is the driver's
  child, started with these variables set) and no runtime_env: then the workers Ray prestarts, one per
  CPU, can host the actors at once; a runtime_env would make Ray start fresh workers for them.
- Actors restart at most MAX_RESTARTS times and their calls are retried at most MAX_TASK_RETRIES
  times (a lost node costs retries, not rows); work whose every try kills its worker fails instead of
  hanging, and so do a cluster whose head stops answering for HEAD_LOST_SECONDS and one that finishes
  nothing for STALL_SECONDS ($SNNCC_RAY_STALL_SECONDS): `ClusterFailure`, a user error (one line, exit
  2). An item whose actor is unreachable (its node just died: calls fail fast, using up Ray's task
  retries, until the cluster marks the node dead and restarts the actor elsewhere) is sent again
  to the same actor handle each second, for at most UNAVAILABLE_SECONDS. Statistics must come
  back per item (actors restart empty).
- Errors raised by user code on an actor (SnnccError) come back as themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from snncc.errors import SnnccError

LOCAL = "local"
MAX_RESTARTS = 4
MAX_TASK_RETRIES = 4
OBJECT_STORE_BYTES = 256 * 2**20  # a private local instance: results are small, keep memory for the sessions
STALL_SECONDS = float(os.environ.get("SNNCC_RAY_STALL_SECONDS", "600"))
POLL_SECONDS = 2.0  # how often a waiting driver checks that the cluster's head still answers
HEAD_LOST_SECONDS = 15.0  # head unreachable this long: give up (before Ray ends the driver at 60 s)
UNAVAILABLE_SECONDS = 120.0  # an item whose actor stays unreachable this long (its node lost, no restart): give up
IN_FLIGHT_PER_ACTOR = 2  # one running, one queued: no idle gap between items
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class ClusterFailure(SnnccError):
    """The Ray cluster could not finish the work (head lost, every worker lost, retries exhausted)."""


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """What `--ray [ADDRESS] --ray-actors N --ray-gpus-per-actor G` asked for."""

    address: str  # "local" or host:port (or ray://...)
    actors: int | None = None  # None: one per CPU of the cluster (per G GPUs when G > 0)
    gpus_per_actor: float = 0.0

    @staticmethod
    def from_cli(address: str | None, actors: int | None, gpus_per_actor: float | None) -> RayOptions | None:
        """None without --ray (in-process); SnnccError for --ray-* options without --ray."""
        if address is None:
            if actors is not None or gpus_per_actor is not None:
                raise SnnccError(f"{'--ray-actors' if actors is not None else '--ray-gpus-per-actor'} needs --ray")
            return None
        return RayOptions(resolve_address(address), actors, gpus_per_actor or 0.0)

    def actor_count(self) -> int:
        """--ray-actors, else the cluster's CPUs (its GPUs / G with G > 0); call inside `connect`."""
        if self.actors is not None:
            return self.actors
        import ray

        resources = ray.cluster_resources()
        if self.gpus_per_actor > 0:
            count = int(resources.get("GPU", 0) // self.gpus_per_actor)
            if count == 0:
                raise SnnccError(f"--ray-gpus-per-actor {self.gpus_per_actor:g}: the Ray cluster has no GPUs")
            return count
        return max(1, int(resources.get("CPU", 1)))


def resolve_address(option: str) -> str:
    """`--ray` alone (option "local") -> $RAY_ADDRESS when set, else "local"; any other value as given."""
    if option == LOCAL:
        return os.environ.get("RAY_ADDRESS", "").strip() or LOCAL
    return option


def import_ray():
    """The ray module, or SnnccError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SnnccError("--ray needs Ray, which is not installed here: pip install 'snncc[ray]'") from None
    return ray


def worker_environment() -> dict[str, str]:
    """The variables every worker needs: this snncc on PYTHONPATH, SNNCC_* variables, the native library."""
    from snncc.session import native_library_path

    env = {k: v for k, v in os.environ.items() if k.startswith("SNNCC_")}
    path = [str(_PACKAGE_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    library = native_library_path()
    if library is not None:
        env["SNNCC_NATIVE_LIB"] = str(library.resolve())
    return env


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """os.environ with `variables` set (for the processes started meanwhile), restored on exit."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _check_reachable(address: str) -> None:
    """SnnccError now, instead of Ray's long reconnect loop, when host:port does not answer."""
    _, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    reason = _unreachable(address, timeout=5)
    if reason is not None:
        raise SnnccError(f"cannot reach the Ray cluster at {address}: {reason}")


@contextlib.contextmanager
def connect(address: str, num_cpus: int | None = None) -> Iterator[object]:
    """Ray connected to `address` ("local": a private instance with `num_cpus`, default all cores),
    shut down on exit; yields the ray module."""
    ray = import_ray()
    from ray.exceptions import AuthenticationError

    if ray.is_initialized():
        raise AssertionError("Ray is already initialised in this process")
    kwargs = {"log_to_driver": False, "logging_level": "ERROR"}
    if address == LOCAL:
        kwargs.update(num_cpus=num_cpus or os.cpu_count() or 1, object_store_memory=OBJECT_STORE_BYTES,
                      include_dashboard=False)
        inherited = _environment({**worker_environment(), "RAY_USAGE_STATS_ENABLED": "0"})  # private: no reporting
    else:
        _check_reachable(address)
        kwargs["runtime_env"] = {"env_vars": worker_environment()}
        inherited = contextlib.nullcontext()
    try:
        try:
            with inherited:
                ray.init(address=address, **kwargs)
        except AuthenticationError:
            if address == LOCAL or os.environ.get("RAY_AUTH_MODE"):
                raise
            ray.shutdown()  # the cluster wants a token: try again with the one Ray finds (~/.ray/auth_token)
            os.environ["RAY_AUTH_MODE"] = "token"
            ray.init(address=address, **kwargs)
    except AuthenticationError:
        raise SnnccError(f"the Ray cluster at {address} wants token authentication and refused this one: set "
                         "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token") from None
    except (ConnectionError, TimeoutError) as error:
        raise SnnccError(f"cannot join the Ray cluster at {address}: {_first_line(error)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def start_actors(actor_class: type, count: int, args: Sequence = (), gpus_per_actor: float = 0.0,
                 cpus_per_actor: float = 1.0) -> list:
    """`count` actors of `actor_class(*args)`, spread over the nodes, restarting and retrying with bounds."""
    import ray

    remote = ray.remote(actor_class).options(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
                                             max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
                                             scheduling_strategy="SPREAD")
    return [remote.remote(*args) for _ in range(count)]


def map_ordered(actors: Sequence, method: str, items: Sequence,
                on_result: Callable[[int, object], None] | None = None) -> list:
    """`getattr(actor, method)(item)` for every item on the pool, each actor holding at most
    IN_FLIGHT_PER_ACTOR items; results in item order. `on_result(index, result)` runs as each one
    arrives (progress). Raises the SnnccError an item raised, or ClusterFailure."""
    import ray
    from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayError, RayTaskError

    results: list = [None] * len(items)
    pending: dict = {}  # object ref -> (item index, actor)
    unavailable_since: dict[int, float] = {}  # item index -> when its actor was first unreachable
    queue = iter(range(len(items)))

    def submit(actor) -> None:
        index = next(queue, None)
        if index is not None:
            pending[getattr(actor, method).remote(items[index])] = (index, actor)

    for _ in range(IN_FLIGHT_PER_ACTOR):
        for actor in actors:
            submit(actor)
    head = ray.get_runtime_context().gcs_address
    last_result = head_seen = time.monotonic()

    def check_head(now: float) -> None:
        nonlocal head_seen
        if _unreachable(head) is None:
            head_seen = now
        elif now - head_seen > HEAD_LOST_SECONDS:
            raise ClusterFailure(f"lost the Ray cluster's head at {head} ({len(pending)} items pending)")

    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
        now = time.monotonic()
        if not done:
            check_head(now)
            if now - last_result > STALL_SECONDS:
                raise ClusterFailure(f"the Ray cluster finished no work for {STALL_SECONDS:.0f} s "
                                     f"({len(pending)} items pending)")
            continue
        last_result = now
        index, actor = pending.pop(done[0])
        try:
            results[index] = ray.get(done[0], timeout=STALL_SECONDS)
        except RayTaskError as error:
            cause = error.cause if isinstance(getattr(error, "cause", None), Exception) else None
            if isinstance(cause, SnnccError):
                raise cause from None
            raise
        except ActorUnavailableError as error:
            check_head(now)
            if now - unavailable_since.setdefault(index, now) > UNAVAILABLE_SECONDS:
                raise ClusterFailure(f"the Ray cluster could not finish item {index + 1} of {len(items)}: its actor "
                                     f"stayed unreachable for {UNAVAILABLE_SECONDS:.0f} s: {_first_line(error)}") from None
            time.sleep(1.0)
            pending[getattr(actor, method).remote(items[index])] = (index, actor)
            continue
        except (RayError, GetTimeoutError) as error:
            raise ClusterFailure(f"the Ray cluster could not finish item {index + 1} of {len(items)}: "
                                 f"{type(error).__name__}: {_first_line(error)}") from None
        if on_result is not None:
            on_result(index, results[index])
        submit(actor)
    return results


def _unreachable(address: str, timeout: float = POLL_SECONDS) -> str | None:
    """Why host:port does not accept a connection, or None when it does."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        return error.strerror or str(error)
    return None


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
