"""Ray helpers shared by every Ray subsystem (the DEFER chain here, the SlimEdge fan-in).

Ray is the optional ``pipeline`` extra: :func:`require_ray` imports it or raises a
:class:`DependencyError` naming ``pip install 'edgelesspart[pipeline]'``. :func:`connect` joins a
cluster (``auto``: the one ``ray start --head`` runs on this machine) or starts a private local
instance; :func:`disconnect` shuts down only what :func:`connect` started. :func:`actor_options`
builds the options of a long-lived, restartable actor pinned by a custom resource.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgelesspart.errors import ConfigError, DependencyError

INSTALL_HINT = "pip install 'edgelesspart[pipeline]'"
#: Restarts of a crashed stage actor and retries of the calls it was running or had queued.
DEFAULT_MAX_RESTARTS = 3
DEFAULT_MAX_TASK_RETRIES = 3


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


def connect(address: str = "local", *, num_cpus: int | None = None) -> bool:
    """Attach this process to Ray; return True when this call started (and owns) it.

    Args:
        address: ``local`` starts a private instance on this machine; ``auto`` joins the cluster
            started by ``ray start --head`` here; ``HOST:PORT`` or ``ray://...`` joins that one.
        num_cpus: CPUs a ``local`` instance advertises (default: Ray's, all of them).
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if address == "local":
        if num_cpus is not None:
            kwargs["num_cpus"] = int(num_cpus)
        ray.init(**kwargs)
    else:
        ray.init(address=address, **kwargs)
    return True


def disconnect(owned: bool) -> None:
    """Shut Ray down if :func:`connect` started it (``owned``)."""
    ray = require_ray()
    if owned and ray.is_initialized():
        ray.shutdown()


def actor_options(
    *,
    resource: str | None = None,
    num_cpus: float = 0.0,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    max_task_retries: int = DEFAULT_MAX_TASK_RETRIES,
    name: str | None = None,
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
