"""Links: bandwidth and round-trip time between the edge device and the cloud function.

A :class:`Link` is data; the bundled ones live in ``edgelesspart/profiling/catalog/links.json``
with their
sources. Transfer time of one offload is one round trip plus the payload at the link's rate::

    transfer_ms(nbytes) = rtt_ms + nbytes * 8 / (mbps * 1e6) * 1000
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from edgelesspart.errors import ConfigError, ProfileError

LINK_VERSION = 1
DIRECTIONS = ("up", "down")
_LINKS_FILE = ("catalog", "links.json")


@dataclass(frozen=True)
class Link:
    """A network path between edge and cloud.

    Attributes:
        name: link name (``3g``, ``lte``, ``5g``, ``wifi``, ``loopback``).
        uplink_mbps: edge -> cloud bandwidth in Mbit/s (10**6 bit/s).
        downlink_mbps: cloud -> edge bandwidth in Mbit/s.
        rtt_ms: round-trip time, charged once per transfer.
        source: where the numbers come from.
    """

    name: str
    uplink_mbps: float
    downlink_mbps: float
    rtt_ms: float
    source: str = ""

    def __post_init__(self) -> None:
        if not (self.uplink_mbps > 0 and self.downlink_mbps > 0):
            raise ProfileError(
                f"Link {self.name!r} needs bandwidths > 0 Mbit/s, got up={self.uplink_mbps}, "
                f"down={self.downlink_mbps}."
            )
        if not self.rtt_ms >= 0:
            raise ProfileError(f"Link {self.name!r} needs rtt_ms >= 0, got {self.rtt_ms}.")

    def transfer_ms(self, nbytes: int, direction: str = "up") -> float:
        """Milliseconds to send ``nbytes``: one round trip plus the payload at the link rate.

        Args:
            nbytes: payload size in bytes.
            direction: ``"up"`` (edge -> cloud, the offload) or ``"down"``.
        """
        if direction not in DIRECTIONS:
            raise ConfigError(f"Unknown link direction {direction!r}; choose 'up' or 'down'.")
        if nbytes < 0:
            raise ConfigError(f"A transfer needs nbytes >= 0, got {nbytes}.")
        mbps = self.uplink_mbps if direction == "up" else self.downlink_mbps
        return self.rtt_ms + nbytes * 8 / (mbps * 1e6) * 1000

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "uplink_mbps": self.uplink_mbps,
            "downlink_mbps": self.downlink_mbps,
            "rtt_ms": self.rtt_ms,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Link:
        """Build from :meth:`to_dict` output; raise :class:`ProfileError` when malformed."""
        if not isinstance(data, dict):
            raise ProfileError(f"A link must be a JSON object, got {type(data).__name__}.")
        try:
            return cls(
                name=str(data["name"]),
                uplink_mbps=float(data["uplink_mbps"]),
                downlink_mbps=float(data.get("downlink_mbps", data["uplink_mbps"])),
                rtt_ms=float(data["rtt_ms"]),
                source=str(data.get("source", "")),
            )
        except ProfileError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"Malformed link: missing or bad field {exc!r}.") from exc


def _bundled_links() -> dict[str, Any]:
    resource = resources.files("edgelesspart.profiling").joinpath(*_LINKS_FILE)
    text = resource.read_text(encoding="utf-8")
    data = json.loads(text)
    if data.get("version", LINK_VERSION) != LINK_VERSION:
        raise ProfileError(f"Unsupported links.json version {data.get('version')!r}.")
    return dict(data["links"])


def list_links() -> list[str]:
    """Names of the bundled links, sorted."""
    return sorted(_bundled_links())


def load_link(name_or_path: str | Path) -> Link:
    """Load a bundled link by name (``wifi``) or a link JSON file (one :meth:`Link.to_dict`).

    Raises:
        ProfileError: unknown name (the message lists the bundled ones) or malformed file.
    """
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".json") or path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ProfileError(f"Cannot read link file {text}: {exc}.") from exc
        return Link.from_dict(data)
    links = _bundled_links()
    if text not in links:
        raise ProfileError(
            f"Unknown link {text!r}. Bundled links: {', '.join(sorted(links))}; "
            "or pass the path of a link JSON file."
        )
    return Link.from_dict(links[text])
