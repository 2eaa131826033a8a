"""Serverless pricing as data: dated price tables per provider and the cost of one invocation.

The tables live in ``edgelesspart/profiling/catalog/pricing/*.json`` (one file per provider, each
with
its date and sources); nothing here hard-codes a price. Costs are marginal list prices (the free
tier is kept in the table as data but not subtracted), in the table's currency (USD).

Billing rules implemented by :func:`cost_per_invocation`:

* duration is rounded **up** to ``billing_increment_ms`` (100 ms for GCF, 1 ms for Lambda), with
  at least one increment per invocation;
* compute = billed seconds x (GB x ``per_gb_s`` + GHz x ``per_ghz_s`` + vCPU x ``per_vcpu_s``),
  where GB = memory_mb / 1024 and GHz/vCPU come from the table's memory tier;
* + ``per_request``; + egress bytes / 2**30 x ``egress_per_gb``;
* + the INIT phase (cold start) billed like duration when the table says ``init_billed``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from edgelesspart.errors import ConfigError

PRICING_PACKAGE = "edgelesspart.profiling"
GIB = 2**30
_FILES = {
    "gcf": "gcf-1st-gen.json",
    "gcf-1st-gen": "gcf-1st-gen.json",
    "gcf-2nd-gen": "gcf-2nd-gen.json",
    "cloud-run": "gcf-2nd-gen.json",
    "lambda": "aws-lambda.json",
    "aws-lambda": "aws-lambda.json",
}
PROVIDERS = ("gcf", "gcf-2nd-gen", "lambda")
_RATE_KEYS = ("per_request", "per_gb_s", "per_ghz_s", "per_vcpu_s", "egress_per_gb")


@dataclass(frozen=True)
class PriceTable:
    """One provider's prices for one CPU architecture.

    Attributes:
        provider: short provider key (``gcf``, ``gcf-2nd-gen``, ``lambda``).
        name: the table's file stem (``gcf-1st-gen``, ``gcf-2nd-gen``, ``aws-lambda``).
        date: ISO date the prices refer to.
        source: where the prices come from (URLs / citations).
        currency: ISO currency code.
        architecture: ``x86_64`` or ``arm64``.
        per_request: price of one invocation.
        per_gb_s: price of one GB-second of memory (GB = 1024 MB).
        per_ghz_s: price of one GHz-second of CPU (GCF 1st gen).
        per_vcpu_s: price of one vCPU-second (Cloud Run functions).
        billing_increment_ms: duration is rounded up to a multiple of this.
        egress_per_gb: price of one GiB of response egress.
        init_billed: whether the INIT phase (cold start) is billed like duration.
        tiers: memory_mb -> {"ghz": ...} or {"vcpu": ...}; empty when any size is allowed.
        memory_mb_range: (min, max) allowed memory when ``tiers`` is empty.
        free_tier: monthly free allowances (data only; not subtracted).
        notes: caveats, what is unverified.
    """

    provider: str
    name: str
    date: str
    source: tuple[str, ...]
    currency: str
    architecture: str
    per_request: float
    per_gb_s: float
    per_ghz_s: float = 0.0
    per_vcpu_s: float = 0.0
    billing_increment_ms: int = 1
    egress_per_gb: float = 0.0
    init_billed: bool = False
    tiers: dict[int, dict[str, float]] = field(default_factory=dict)
    memory_mb_range: tuple[int, int] | None = None
    free_tier: dict[str, float] = field(default_factory=dict)
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary (what an evaluation records about its prices)."""
        return {
            "provider": self.provider,
            "name": self.name,
            "date": self.date,
            "source": list(self.source),
            "currency": self.currency,
            "architecture": self.architecture,
            "per_request": self.per_request,
            "per_gb_s": self.per_gb_s,
            "per_ghz_s": self.per_ghz_s,
            "per_vcpu_s": self.per_vcpu_s,
            "billing_increment_ms": self.billing_increment_ms,
            "egress_per_gb": self.egress_per_gb,
            "init_billed": self.init_billed,
        }

    def check_memory(self, memory_mb: int) -> None:
        """Raise :class:`ConfigError` unless ``memory_mb`` is a size this provider sells."""
        if self.tiers:
            if int(memory_mb) not in self.tiers or memory_mb != int(memory_mb):
                raise ConfigError(
                    f"{self.name} has no {memory_mb} MB memory tier. Choose one of "
                    f"{sorted(self.tiers)} MB (--memory-mb)."
                )
            return
        low, high = self.memory_mb_range or (1, math.inf)
        if not low <= memory_mb <= high:
            raise ConfigError(
                f"{self.name} memory must be between {low} and {high} MB, got {memory_mb} MB "
                "(--memory-mb)."
            )


def load_prices(provider: str, architecture: str = "x86_64") -> PriceTable:
    """Load the bundled price table of a provider.

    Args:
        provider: ``gcf`` (1st gen, the paper's model), ``gcf-2nd-gen`` or ``lambda``.
        architecture: ``x86_64`` or ``arm64`` (Lambda only offers both).

    Returns:
        The provider's :class:`PriceTable` for that architecture.
    """
    key = provider.strip().lower()
    if key not in _FILES:
        raise ConfigError(
            f"Unknown pricing provider {provider!r}. Supported providers: {', '.join(PROVIDERS)}."
        )
    resource = resources.files(PRICING_PACKAGE).joinpath("catalog", "pricing").joinpath(_FILES[key])
    data = json.loads(resource.read_text(encoding="utf-8"))
    return price_table_from_dict(data, architecture)


def price_table_from_dict(data: dict[str, Any], architecture: str = "x86_64") -> PriceTable:
    """Build a :class:`PriceTable` from a pricing JSON document (see ``pricing/*.json``)."""
    arches = data.get("architectures", {"x86_64": {}})
    if architecture not in arches:
        raise ConfigError(
            f"{data.get('name', 'this provider')} has no {architecture!r} prices; "
            f"available architectures: {', '.join(sorted(arches))}."
        )
    rates = {k: float(data.get(k, 0.0)) for k in _RATE_KEYS}
    rates.update({k: float(v) for k, v in arches[architecture].items() if k in _RATE_KEYS})
    span = data.get("memory_mb_range")
    try:
        return PriceTable(
            provider=str(data["provider"]),
            name=str(data["name"]),
            date=str(data["date"]),
            source=tuple(str(s) for s in data["source"]),
            currency=str(data.get("currency", "USD")),
            architecture=architecture,
            billing_increment_ms=int(data["billing_increment_ms"]),
            init_billed=bool(data.get("init_billed", False)),
            tiers={int(k): {m: float(x) for m, x in v.items()} for k, v in data["tiers"].items()},
            memory_mb_range=(int(span[0]), int(span[1])) if span else None,
            free_tier={str(k): float(v) for k, v in data.get("free_tier", {}).items()},
            notes=str(data.get("notes", "")),
            **rates,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"Malformed price table: missing or bad field {exc}.") from exc


def billed_ms(duration_ms: float, increment_ms: int) -> float:
    """Round a duration up to the billing increment (at least one increment)."""
    if duration_ms < 0 or math.isnan(duration_ms):
        raise ConfigError(f"A billed duration must be >= 0 ms, got {duration_ms}.")
    steps = math.ceil(duration_ms / increment_ms - 1e-9)
    return float(max(steps, 1) * increment_ms)


def cost_per_invocation(
    table: PriceTable,
    duration_ms: float,
    memory_mb: int,
    *,
    egress_bytes: int = 0,
    init_ms: float = 0.0,
) -> float:
    """Price of one invocation.

    Args:
        table: the provider's price table.
        duration_ms: execution time of the function (before rounding).
        memory_mb: configured memory (a tier for GCF).
        egress_bytes: response bytes leaving the provider (charged where the table says so).
        init_ms: INIT-phase (cold start) duration to bill, if the provider bills it.

    Returns:
        The cost in ``table.currency``.
    """
    table.check_memory(memory_mb)
    seconds = billed_ms(duration_ms, table.billing_increment_ms) / 1000.0
    if table.init_billed and init_ms > 0:
        seconds += billed_ms(init_ms, table.billing_increment_ms) / 1000.0
    tier = table.tiers.get(int(memory_mb), {})
    per_second = (
        memory_mb / 1024.0 * table.per_gb_s
        + tier.get("ghz", 0.0) * table.per_ghz_s
        + tier.get("vcpu", 0.0) * table.per_vcpu_s
    )
    egress = egress_bytes / GIB * table.egress_per_gb
    return table.per_request + seconds * per_second + egress


def per_million(cost: float) -> float:
    """Scale a per-invocation cost to 1M invocations."""
    return cost * 1_000_000


def make_price_fn(
    table: PriceTable,
    memory_mb: int,
    *,
    egress_bytes: int = 0,
    cold_start_ms: float = 0.0,
    cold_start_prob: float = 0.0,
) -> Callable[[float], float]:
    """A ``price_fn(cloud_ms) -> cost per invocation`` for :func:`edgelesspart.evaluation.sweep`.

    The INIT phase enters as its expectation: ``cold_start_prob`` x the cost of billing
    ``cold_start_ms`` (only when the provider bills INIT).
    """
    table.check_memory(memory_mb)
    if not 0.0 <= cold_start_prob <= 1.0:
        raise ConfigError(f"cold_start_prob must be within [0, 1], got {cold_start_prob}.")
    init_cost = 0.0
    if table.init_billed and cold_start_ms > 0 and cold_start_prob > 0:
        warm = cost_per_invocation(table, 1.0, memory_mb)
        cold = cost_per_invocation(table, 1.0, memory_mb, init_ms=cold_start_ms)
        init_cost = cold_start_prob * (cold - warm)

    def price_fn(cloud_ms: float) -> float:
        run = cost_per_invocation(table, cloud_ms, memory_mb, egress_bytes=egress_bytes)
        return run + init_cost

    return price_fn
