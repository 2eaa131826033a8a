"""Ray helpers shared by every Ray subsystem (the DEFER chain here, the SlimEdge fan-in).

Ray is the optional ``pipeline`` extra: :func:`require_ray` imports it or raises a
:class:`DependencyError` naming ``pip install 'edgelesspart[pipeline]'``. :func:`connect` joins a
cluster (``auto``: the one ``ray start --head`` runs on this machine) or starts a private local
instance; :func:`disconnect` shuts down only what :func:`connect` started. :func:`actor_options`
builds the options of a long-lived, restartable actor pinned by a custom resource.

A ``local`` instance is private: its own temporary directory (so it never joins, nor is joined
by, another Ray on the machine) and every Ray process bound to 127.0.0.1. Ray rewrites
``127.0.0.1`` to the host's address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which Ray
reads when it is imported; :func:`connect` sets it (and Ray's copy of it) for a local instance.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgelesspart.errors import ConfigError, DependencyError

INSTALL_HINT = "pip install 'edgelesspart[pipeline]'"
#: Ray restarts a crashed stage actor without limit (-1): on a lost node the restart waits until
#: a node offers the stage's resource again. Calls are not retried by Ray (0): the dispatcher
#: retries them itself within each request's deadline, so every failure is seen and counted.
DEFAULT_MAX_RESTARTS = -1
DEFAULT_MAX_TASK_RETRIES = 0
LOOPBACK = "127.0.0.1"
#: Ray's switch between "cluster" (node IP) and "loopback only" addressing.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def require_ray() -> Any:
    """Import and return the ``ray`` module.

    Raises:
        DependencyError: Ray is not installed.
    """
    try:
        import ray
    except ImportError as exc:
        raise DependencyError(
            f"The multi-node pipeline runs on Ray, which is not installed: {INSTALL_HINT}."
        ) from exc
    return ray


@dataclass(frozen=True)
class RaySession:
    """What :func:`connect` did: whether it started (owns) Ray, and the private temp dir of a
    ``local`` instance. Truthy when owned."""

    owned: bool
    temp_dir: str | None = None
    address: str | None = None

    def __bool__(self) -> bool:
        return self.owned


def loopback_only() -> None:
    """Make Ray address this machine as 127.0.0.1 (before or after ``import ray``)."""
    os.environ[LOOPBACK_ENV] = "0"
    try:
        from ray._private import ray_constants  # Ray reads the variable once, at import

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # pragma: no cover - other Ray versions
        pass


#: Ray's fixed default metric ports (autoscaler 44217, dashboard 44227), read from the
#: environment by the processes ray.init starts: a private instance gets free ones.
METRIC_PORT_ENV = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def private_temp_dir() -> str:
    """A fresh, short directory for a private Ray (its sockets need paths under 108 bytes)."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    return tempfile.mkdtemp(prefix="elp-ray-", dir=base)


def connect(
    address: str = "local", *, num_cpus: int | None = None, temp_dir: str | None = None
) -> RaySession:
    """Attach this process to Ray; the session is truthy when this call started (owns) it.

    Args:
        address: ``local`` starts a private instance on this machine (own temp dir, bound to
            127.0.0.1, never joining another cluster); ``auto`` joins the cluster started by
            ``ray start --head`` here; ``HOST:PORT`` or ``ray://...`` joins that one.
        num_cpus: CPUs a ``local`` instance advertises (default: Ray's, all of them).
        temp_dir: the private instance's directory (default: a new one, removed on disconnect).
    """
    ray = require_ray()
    if ray.is_initialized():
        return RaySession(False)
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if address != "local":
        context = ray.init(address=address, **kwargs)
        return RaySession(True, None, context.address_info.get("gcs_address"))
    loopback_only()
    for name in METRIC_PORT_ENV:
        os.environ.setdefault(name, str(_free_port()))
    tmp = temp_dir or private_temp_dir()
    if num_cpus is not None:
        kwargs["num_cpus"] = int(num_cpus)
    try:
        context = ray.init(address="local", _node_ip_address=LOOPBACK, _temp_dir=tmp, **kwargs)
    except BaseException:
        if not temp_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RaySession(True, None if temp_dir else tmp, context.address_info.get("gcs_address"))


def disconnect(session: RaySession | bool) -> None:
    """Shut Ray down if :func:`connect` started it, and remove its private temp dir."""
    ray = require_ray()
    if session and ray.is_initialized():
        ray.shutdown()
    temp_dir = getattr(session, "temp_dir", None)
    if session and temp_dir:
        shutil.rmtree(temp_dir, ignore_errors=True)


def actor_options(
    *,
    resource: str | None = None,
    num_cpus: float = 0.0,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    max_task_retries: int = DEFAULT_MAX_TASK_RETRIES,
    name: str | None = None,
    node_id: str | None = None,
) -> dict[str, Any]:
    """Options for ``ActorClass.options(**...)``: restartable, pinned by a custom resource.

    ``num_cpus`` defaults to 0 so that N stage actors fit on a small local test instance; on a
    cluster the custom ``resource`` (one unit, e.g. ``rpi-3`` advertised by
    ``ray start --resources '{"rpi-3": 1}'``) decides where each actor lives.
    """
    options: dict[str, Any] = {
        "num_cpus": num_cpus,
        "max_restarts": int(max_restarts),
        "max_task_retries": int(max_task_retries),
    }
    if resource:
        options["resources"] = {resource: 1}
    if name:
        options["name"] = name
    if node_id:  # a replacement node: prefer it, but let Ray place it elsewhere if it must
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
    return options


def parse_placement(text: str | None, stages: Sequence[str]) -> dict[str, str]:
    """``stage0=rpi-0,stage1=rpi-1`` -> {stage: resource}; stages may also be given by index.

    Raises:
        ConfigError: malformed item or unknown stage (the message lists the stages).
    """
    placement: dict[str, str] = {}
    for item in [p.strip() for p in (text or "").split(",") if p.strip()]:
        stage, sep, resource = item.partition("=")
        stage, resource = stage.strip(), resource.strip()
        if not sep or not stage or not resource:
            raise ConfigError(
                f"Bad placement {item!r}; write STAGE=RESOURCE pairs such as stage0=rpi-0,"
                "stage1=rpi-1."
            )
        if stage.isdigit() and int(stage) < len(stages):
            stage = stages[int(stage)]
        if stage not in stages:
            raise ConfigError(f"Unknown stage {stage!r} in placement; stages: {list(stages)}.")
        placement[stage] = resource
    return placement


def cluster_resources() -> Mapping[str, float]:
    """The cluster's total resources (custom ones included)."""
    return dict(require_ray().cluster_resources())


def kill_actors(actors: Sequence[Any]) -> None:
    """Kill ``actors`` without restart; one already gone is skipped."""
    ray = require_ray()
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
