"""Settings of one simulated processor, and of the faults it injects."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field, fields, replace
from typing import Any

from offterm.plugins.readers.card_encryption import TEST_BASE_KEY_HEX

#: Statuses the simulator can answer with on purpose, as Stripe would.
FAULT_STATUSES = (500, 502, 503, 429)
#: Non-final PaymentIntent statuses a confirm can answer with on purpose (``confirm_status``).
CONFIRM_STATUSES = ("processing", "requires_action")


@dataclass(frozen=True)
class FaultConfig:
    """What goes wrong, and how often.  Rates are probabilities in [0, 1].

    ``error_rates`` maps an HTTP status (500, 502, 503, 429) to a rate; the
    request is refused before it runs.  ``reset_rate`` / ``drop_rate`` close
    the connection without an answer before the request runs (RST / FIN).
    ``commit_drop_rate`` runs the request (it takes effect) and then closes
    the connection without answering; ``commit_delay_rate`` runs it and
    answers only after ``commit_delay`` seconds (longer than a client's
    timeout, so the client gives up).  ``latency`` seconds are added before
    every faultable request.  Only paths starting with one of ``paths`` are
    faulted (empty: every path except the admin ones, which never are).

    ``confirm_status`` maps a non-final PaymentIntent status ("processing",
    "requires_action") to the rate at which a confirm that would charge
    (``POST /v1/payment_intents/{id}/confirm``, or a create with
    ``confirm=true``) answers with it instead: "processing" settles to the
    card's real outcome ``processing_for`` seconds later on the account's
    clock; "requires_action" makes no charge and stays (an offline card cannot
    complete it).  These rates are drawn after the request got through the
    transport faults, so they add up to at most 1 on their own.
    """

    error_rates: dict[int, float] = field(default_factory=dict)
    reset_rate: float = 0.0
    drop_rate: float = 0.0
    commit_drop_rate: float = 0.0
    commit_delay_rate: float = 0.0
    commit_delay: float = 30.0
    latency: float = 0.0
    paths: tuple[str, ...] = ()
    confirm_status: dict[str, float] = field(default_factory=dict)
    processing_for: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        rates = dict(self.error_rates)
        for status, rate in rates.items():
            if int(status) not in FAULT_STATUSES:
                raise ValueError(f"fault status must be one of {FAULT_STATUSES}, got {status}")
            _check_rate(f"error_rates[{status}]", rate)
        object.__setattr__(self, "error_rates", {int(k): float(v) for k, v in rates.items()})
        for name in ("reset_rate", "drop_rate", "commit_drop_rate", "commit_delay_rate"):
            _check_rate(name, getattr(self, name))
        total = sum(self.error_rates.values()) + self.reset_rate + self.drop_rate
        total += self.commit_drop_rate + self.commit_delay_rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {total:.3f}, more than 1")
        if self.latency < 0 or self.commit_delay < 0:
            raise ValueError("latency and commit_delay must be >= 0")
        object.__setattr__(self, "paths", tuple(self.paths))
        statuses = dict(self.confirm_status)
        for name, rate in statuses.items():
            if name not in CONFIRM_STATUSES:
                raise ValueError(f"confirm status must be one of {CONFIRM_STATUSES}, got {name!r}")
            _check_rate(f"confirm_status[{name}]", rate)
        object.__setattr__(self, "confirm_status", {str(k): float(v) for k, v in statuses.items()})
        if sum(self.confirm_status.values()) > 1.0 + 1e-9:
            raise ValueError("confirm_status rates add up to more than 1")
        if not math.isfinite(self.processing_for) or self.processing_for < 0:
            raise ValueError("processing_for must be >= 0")

    @property
    def active(self) -> bool:
        return bool(
            any(self.error_rates.values())
            or self.reset_rate
            or self.drop_rate
            or self.commit_drop_rate
            or self.commit_delay_rate
            or self.latency
        )

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["error_rates"] = {str(k): v for k, v in self.error_rates.items()}
        data["paths"] = list(self.paths)
        data["confirm_status"] = dict(self.confirm_status)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        data = dict(data)
        if "error_rates" in data:
            data["error_rates"] = {int(k): float(v) for k, v in (data["error_rates"] or {}).items()}
        if "paths" in data:
            data["paths"] = tuple(data["paths"] or ())
        if "confirm_status" in data:
            data["confirm_status"] = {str(k): float(v) for k, v in (data["confirm_status"] or {}).items()}
        return cls(**data)


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {rate}")


@dataclass(frozen=True)
class SimConfig:
    """One simulated Stripe account.

    ``secret_key`` is what the integrator's backend holds; the simulator
    mints connection tokens for it.  ``backend_auth_token``, when set, is the
    bearer token the "your backend" endpoint requires.  ``base_key_hex`` is
    the processor-side card-data key (the readers' test key by default).
    Public requests are checked against Stripe's OpenAPI spec: by default
    the subset shipped with offterm, for unknown parameters only (refused
    with Stripe's ``parameter_unknown``, as Stripe does; set
    ``refuse_unknown_params=False`` to accept them).  ``spec_path`` names a
    spec file (Stripe's full ``spec3.json``, or the shipped subset) to check
    every public request against completely (types, enums, required
    fields; needs ``jsonschema``) and refuse those that do not conform.
    ``idempotency_ttl`` is how long an idempotency key is remembered after
    its first use (Stripe: at least 24 hours); ``search_delay`` is how long
    after its creation a PaymentIntent becomes visible to search (Stripe's
    index lags, "under a minute" normally).  Both are measured on the
    account's clock, which tests move with ``SimHandle.advance_clock``.
    """

    secret_key: str = field(default_factory=lambda: "sk_test_sim" + secrets.token_hex(12), repr=False)
    account_id: str = "acct_1SimulatedOfftrm"
    livemode: bool = False
    base_key_hex: str = field(default=TEST_BASE_KEY_HEX, repr=False)
    backend_auth_token: str | None = field(default=None, repr=False)
    location_id: str | None = None
    connection_token_ttl: float = 600.0
    session_ttl: float = 600.0
    faults: FaultConfig = field(default_factory=FaultConfig)
    spec_path: str | None = None
    refuse_unknown_params: bool = True
    request_log_size: int = 10_000
    idempotency_ttl: float = 86_400.0
    search_delay: float = 0.0

    def __post_init__(self) -> None:
        if not self.secret_key.startswith(("sk_test_", "sk_live_")):
            raise ValueError("secret_key must start with sk_test_ or sk_live_")
        if self.secret_key.startswith("sk_live_") != self.livemode:
            raise ValueError("secret_key prefix and livemode disagree")
        if len(bytes.fromhex(self.base_key_hex)) != 32:
            raise ValueError("base_key_hex must be 32 bytes of hex")
        if self.connection_token_ttl <= 0 or self.session_ttl <= 0:
            raise ValueError("token and session lifetimes must be positive")
        if not self.idempotency_ttl > 0:
            raise ValueError("idempotency_ttl must be positive")
        if not (math.isfinite(self.search_delay) and self.search_delay >= 0):
            raise ValueError("search_delay must be >= 0")

    def with_faults(self, faults: FaultConfig) -> SimConfig:
        return replace(self, faults=faults)

    @classmethod
    def build(cls, **options: Any) -> SimConfig:
        """Build from keyword options; ``faults`` may be a dict or FaultConfig."""
        faults = options.pop("faults", None)
        if isinstance(faults, dict):
            options["faults"] = FaultConfig(**faults)
        elif faults is not None:
            options["faults"] = faults
        return cls(**options)
