"""Configuration, read once at start from the environment and `.env`.

Every setting the server reads is declared here (and documented in
`.env.example` and the README's settings table), so a typo or a bad value
stops the server at start with a message naming the variable instead of
failing later on a live payment. Every problem is reported in one run
(`python server.py --check` lists them without starting), and an empty value
means "unset" in the environment and in `.env` alike, so a copied
`.env.example` starts as it is.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal, get_args
from urllib.parse import quote, urlsplit, urlunsplit

from aiohttp import web
from pydantic import Field, IPvAnyNetwork, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.addresses import literal_refusals
from core.secrets import endpoint_secrets

# The merchant webhook event types (MERCHANT_WEBHOOK_EVENTS); payments/outbox.py produces them.
MerchantEvent = Literal[
    "payment.succeeded",
    "payment.failed",
    "payment.initiated",
    "payment.expired",
    "payment.refunded",
    "payout.succeeded",
    "payout.failed",
]


class AppEnv(str, Enum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class StorageBackend(str, Enum):
    MEMORY = "memory"
    REDIS = "redis"


class AuthMode(str, Enum):
    NONE = "none"
    JWT = "jwt"
    INTROSPECT = "introspect"


class ProviderName(str, Enum):
    SANDBOX = "sandbox"
    CAMPAY = "campay"


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


# HS256 keys shorter than the SHA-256 output are refused in production (RFC 7518 section 3.2).
MIN_PRODUCTION_SECRET_BYTES = 32

# Shown masked by `--check`; never echoed in a problem report.
SECRET_SETTINGS = frozenset(
    {
        "CAMPAY_APP_PASSWORD",
        "CAMPAY_PERMANENT_ACCESS_TOKEN",
        "CAMPAY_WEBHOOK_KEY",
        "MERCHANT_WEBHOOK_SECRET",
        "JWT_SECRET",
        "DEBUG_TOKEN",
        "METRICS_TOKEN",
        "REDIS_PASSWORD",
        "REDIS_URL",
    }
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration: the variable, and what it needs to be."""

    variable: str
    message: str

    def __str__(self) -> str:
        return f"{self.variable}: {self.message}"


class ConfigurationProblems(ValueError):
    """Every cross-setting problem found in one pass (carried through pydantic's error)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


class Settings(BaseSettings):
    """All server settings. Field names are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        # `NAME=` means unset (the default applies), in `.env` and in the environment alike.
        env_ignore_empty=True,
    )

    APP_ENV: AppEnv = AppEnv.DEVELOPMENT
    # Default: 127.0.0.1 in development (the simulate endpoint settles any payment, so it must not
    # be reachable from the network), 0.0.0.0 in production (behind the load balancer).
    HOST: str | None = None
    PORT: int = Field(5000, ge=0, le=65535)
    INSTANCE_ID: str = Field(default_factory=_default_instance_id)
    # How often this instance refreshes its heartbeat in Redis; after three missed beats the
    # connections it recorded count as a crashed instance's and are removed.
    INSTANCE_HEARTBEAT_SECONDS: float = Field(10.0, gt=0, le=300)
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "auto": uvloop where it is installed (Linux, macOS), else asyncio's own loop; "asyncio" forces it.
    EVENT_LOOP: Literal["auto", "asyncio"] = "auto"
    # SIGTERM / Ctrl-C: the process is gone within this many seconds, whatever its clients do.
    SHUTDOWN_TIMEOUT_SECONDS: float = Field(10.0, gt=0, le=300)
    # Connections the kernel queues for us before dropping SYNs (capped by net.core.somaxconn, 4096 on
    # current Linux). Every client of a restarted instance reconnects at once; a dropped SYN costs its
    # client a 1 s, then 3 s, then 7 s retransmit. In a 5,000-page drop storm 1024 overflowed 36,758 times
    # and re-tracked in 20.8 s; 4096 overflowed 4,319 times, 12.8 s (docs/PERFORMANCE.md).
    LISTEN_BACKLOG: int = Field(4096, ge=1, le=65535)
    # The server runs the garbage collector itself, in passes bounded by time (core/collector.py): young
    # passes four times a second, and what a burst of this many Engine.IO sessions left frozen out of every
    # pass once it settles. 0: CPython's automatic collector instead.
    GC_FREEZE_AFTER_SESSIONS: int = Field(1000, ge=0)

    # Comma-separated list of the page origins allowed by CORS and by Socket.IO ("*": any), besides the
    # server's own. Unset: in development any page on this machine (localhost, 127.0.0.0/8, [::1], any
    # port); in production none but the server's own (core/origins.py).
    FRONTEND_URL: Annotated[list[str], NoDecode] = []

    STORAGE_BACKEND: StorageBackend | None = None
    PAYMENT_TTL_SECONDS: int = Field(3600, gt=0)
    CLIENT_TTL_SECONDS: int = Field(86400, gt=0)
    EVENT_LOG_MAX: int = Field(50, gt=0, le=1000)
    MAX_BODY_BYTES: int = Field(64 * 1024, gt=0)

    PAYMENT_PROVIDER: ProviderName | None = None
    SANDBOX_AUTOCOMPLETE_SECONDS: float | None = Field(None, ge=0)
    SANDBOX_OUTCOME: Literal["SUCCESSFUL", "FAILED"] = "SUCCESSFUL"
    SIMULATE_ENABLED: bool | None = None

    CAMPAY_API_URL: str = "https://demo.campay.net/api"
    CAMPAY_APP_ID: str = ""
    CAMPAY_USERNAME: str = ""
    CAMPAY_APP_PASSWORD: str = ""
    CAMPAY_PERMANENT_ACCESS_TOKEN: str = ""
    CAMPAY_WEBHOOK_KEY: str = ""
    # A callback's signature carrying `iat` (CamPay's do) is accepted this long after it was issued, plus
    # 30 s for the two clocks; past it, 401 `signature_expired` (a captured signature is not good for ever).
    CAMPAY_WEBHOOK_MAX_AGE_SECONDS: float = Field(300.0, gt=0, le=86400)
    # Set only if your CamPay app's signatures carry a `status` claim: it is then required and must match
    # the callback's. Needed for WEBHOOK_VERIFY_WITH_PROVIDER=false in production.
    CAMPAY_WEBHOOK_SIGNATURE_BINDS_STATUS: bool = False
    # Addresses or CIDR ranges CamPay's callbacks may come from (empty: any; the signature still decides).
    CAMPAY_WEBHOOK_ALLOWED_IPS: Annotated[list[IPvAnyNetwork], NoDecode] = []

    CAMPAY_TIMEOUT_SECONDS: float = Field(10.0, gt=0, le=120)
    CAMPAY_RETRY_ATTEMPTS: int = Field(4, ge=1, le=10)
    CAMPAY_RETRY_BASE_SECONDS: float = Field(0.5, ge=0, le=30)
    WEBHOOK_VERIFY_WITH_PROVIDER: bool = True
    # An initiation holds its order and its Idempotency-Key with leases this long, renewed every third of
    # it while it runs (a slow collect keeps them); a crashed holder's lapse after at most this.
    INITIATION_LEASE_SECONDS: float = Field(10.0, gt=0, le=300)
    # How long a collect whose outcome is unknown (the instance died, CamPay did not answer) holds its order
    # against a second collect, waiting for CamPay's callback to link it (payments/initiation.py).
    COLLECT_LIFETIME_SECONDS: float = Field(600.0, gt=0, le=86400)
    # How long a payment link (POST /api/payment/link) can be paid: at least CamPay's own link lifetime
    # (CamPay documents none; 600 s is assumed). Past it, a link CamPay still knows no transaction for is
    # EXPIRED (never FAILED); one its payer started is asked about until CamPay says how it ended. Default:
    # 600, or half of RECONCILE_MAX_AGE_SECONDS if that is less (it must stay under it).
    LINK_LIFETIME_SECONDS: float | None = Field(None, gt=0, le=86400)
    # How often the reconciler asks CamPay about a link nobody has started paying (CamPay answers "not
    # found" until then): slower than RECONCILE_INTERVAL_SECONDS, since a payer may take minutes.
    LINK_RECONCILE_INTERVAL_SECONDS: float = Field(60.0, gt=0, le=3600)

    RECONCILE_ENABLED: bool = True
    RECONCILE_AFTER_SECONDS: float = Field(60, ge=0)
    RECONCILE_INTERVAL_SECONDS: float = Field(15, gt=0)
    RECONCILE_MAX_AGE_SECONDS: float = Field(900, gt=0)

    # Outbound webhooks to the merchant's backend (none = off), per the Standard Webhooks specification.
    MERCHANT_WEBHOOK_URL: Annotated[list[str], NoDecode] = []
    # One entry per URL, comma-separated in the same order; an entry is one `whsec_` secret, or during a
    # rotation several, space-separated (each message then carries every one's signature). core/secrets.py.
    MERCHANT_WEBHOOK_SECRET: str = ""
    MERCHANT_WEBHOOK_EVENTS: Annotated[list[str], NoDecode] = [
        "payment.succeeded",
        "payment.failed",
        "payment.expired",
        "payment.refunded",
        "payout.succeeded",
        "payout.failed",
    ]
    # Per attempt, in all; the specification recommends 15 to 30 s, so a merchant has time to answer.
    MERCHANT_WEBHOOK_TIMEOUT_SECONDS: float = Field(15.0, ge=15, le=30)
    # Ten attempts span about three days (webhooks/outbound/delivery.py, RETRY_SCHEDULE).
    MERCHANT_WEBHOOK_MAX_ATTEMPTS: int = Field(10, ge=1, le=50)
    # Production sends only to https endpoints at public addresses; true lifts both (local tests only).
    MERCHANT_WEBHOOK_ALLOW_PRIVATE: bool = False
    MERCHANT_WEBHOOK_RETRY_SCALE: float = Field(1.0, gt=0, le=10)
    MERCHANT_WEBHOOK_POLL_SECONDS: float = Field(1.0, gt=0, le=60)
    # Dead-lettered messages are kept this long (for replay), and at most this many (oldest dropped).
    MERCHANT_DEAD_LETTER_TTL_SECONDS: float = Field(7 * 86400, gt=0)
    MERCHANT_DEAD_LETTER_MAX: int = Field(10_000, ge=1, le=1_000_000)

    # Who may call: none (development only), jwt (verified locally), introspect (asked of AUTH_SERVICE_URL).
    AUTH_MODE: AuthMode | None = None
    JWT_SECRET: str = ""
    JWT_PUBLIC_KEY: str = ""
    JWT_AUDIENCE: str = ""
    JWT_ISSUER: str = ""
    AUTH_SERVICE_URL: str = ""
    AUTH_CACHE_TTL_SECONDS: float = Field(1800, gt=0)
    TOKEN_EXPIRY_WARNING_SECONDS: float = Field(60, ge=0)

    MIN_AMOUNT: int = Field(1, gt=0)
    MAX_AMOUNT: int = Field(1_000_000, gt=0)

    # Abuse limits ("N/second|minute|hour|day", the `limits` library's notation).
    RATE_LIMIT_INITIATE_PER_USER: str = "10/minute"
    RATE_LIMIT_INITIATE_PER_IP: str = "30/minute"
    RATE_LIMIT_WEBHOOK_PER_IP: str = "600/minute"
    RATE_LIMIT_CONNECT_PER_IP: str = "120/minute"
    # Calls (track-payment, stop-tracking-payment, refresh-token, ...) one socket may make; over it a call
    # is answered `rate_limited` with `retry_after`. Room for a page re-tracking MAX_TRACKED_PER_SOCKET
    # payments after a reconnect and stopping each as it settles.
    RATE_LIMIT_CALLS_PER_SOCKET: str = "120/10 seconds"
    MAX_TRACKED_PER_SOCKET: int = Field(50, gt=0)
    # Engine.IO sessions that have not sent Socket.IO's CONNECT: at most this many per address
    # (429 over it), each closed after SOCKET_CONNECT_TIMEOUT_SECONDS.
    MAX_ANONYMOUS_SESSIONS_PER_IP: int = Field(20, gt=0, le=10_000)
    # Sessions handshaken and not yet connected, every address: past this a new one's CONNECT is answered
    # `busy` with `retry_after`, and past as many again refused ones a handshake gets 503 (realtime/handshakes.py).
    SOCKET_MAX_CONNECTING: int = Field(256, gt=0, le=100_000)
    SOCKET_CONNECT_TIMEOUT_SECONDS: float = Field(5.0, gt=0, le=120)
    # Engine.IO's heartbeat, announced to every client: a PING this long after the last PONG, and a
    # client that has not answered within the timeout is let go (Socket.IO's defaults, Node's too).
    # Whole seconds: Engine.IO announces them in whole seconds. Keep the interval under your proxy's
    # idle timeout (nginx's proxy_read_timeout is 60 s).
    SOCKET_PING_INTERVAL_SECONDS: int = Field(25, ge=1, le=300)
    SOCKET_PING_TIMEOUT_SECONDS: int = Field(20, ge=1, le=300)
    # A polling session's upgrade to websocket (Engine.IO's probe, then UPGRADE) that has not finished
    # after this long is given up: its websocket is closed and the session goes on polling
    # (Engine.IO's `upgradeTimeout`, 10 s in Node's engine.io).
    SOCKET_UPGRADE_TIMEOUT_SECONDS: float = Field(10.0, gt=0, le=120)
    # Engine.IO packets queued for one socket whose client does not take them (a websocket client that
    # stopped reading, a polling client that stopped polling): past this many the socket is closed and
    # its connection dropped. A client that reads never comes near it; see docs/API.md.
    SOCKET_MAX_QUEUED_PACKETS: int = Field(1000, ge=16, le=100_000)
    # Take the client IP from X-Forwarded-For (only behind a proxy you control).
    TRUST_FORWARDED_FOR: bool = False

    # Bearer token for the debug endpoints in production (without it they are 404 there).
    DEBUG_TOKEN: str = ""

    # The live checkout test page at /payment-test (default: on in development, off in production).
    TEST_PAGE_ENABLED: bool | None = None
    # /metrics: open in development; in production 404 unless public or scraped with this bearer token.
    METRICS_TOKEN: str = Field("", max_length=256)
    METRICS_PUBLIC: bool = False

    REDIS_URL: str = ""
    REDIS_HOST: str = "localhost"
    REDIS_PORT: int = Field(6379, gt=0, le=65535)
    REDIS_PASSWORD: str = ""
    REDIS_DB: int = Field(0, ge=0, le=15)
    # REDIS_URL names one node of a Redis Cluster (redis:// or rediss://); the client discovers the rest.
    REDIS_CLUSTER: bool = False
    # On a cluster, how long a call about a shard whose primary is gone waits for its replica to be promoted
    # before the instance gives up on Redis and runs on memory (degraded). About twice the cluster's
    # `cluster-node-timeout` plus a second or two: the recipe's 2 s node timeout fails over in 3 to 4 s.
    REDIS_CLUSTER_FAILOVER_WAIT_SECONDS: float = Field(6.0, ge=0, le=120)
    # Prepended to every Redis key, so deployments (or tests) can share one Redis.
    REDIS_KEY_PREFIX: str = Field("paytrack:", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:{}-]+$")
    # Pub/sub channel the Socket.IO manager uses; the same on every instance of one deployment.
    SOCKETIO_CHANNEL: str = Field("paytrack-socketio", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    # While Redis is unreachable: how often to try again (and how often a healthy Redis is pinged).
    REDIS_RECONNECT_INTERVAL_SECONDS: float = Field(2.0, gt=0, le=300)
    # Connect and command timeout for storage calls, and the bound on one pub/sub publish.
    REDIS_TIMEOUT_SECONDS: float = Field(2.0, gt=0, le=60)
    # With replicas (Sentinel): after each status change, WAIT until this many replicas have it, for at most
    # REDIS_WAIT_TIMEOUT_MS. A change no replica confirmed is published anyway, and asked of CamPay again
    # once the instance has seen Redis fail over (the failover may have lost it). 0: no WAIT (one server).
    REDIS_WAIT_REPLICAS: int = Field(0, ge=0, le=10)
    REDIS_WAIT_TIMEOUT_MS: int = Field(100, ge=1, le=10_000)
    # PING interval on idle Redis connections (the pub/sub listener has no read timeout).
    REDIS_HEALTH_CHECK_INTERVAL_SECONDS: int = Field(15, ge=1, le=3600)
    # Connections per Redis pool (storage, rate limiter, publisher). A burst beyond it waits up to
    # REDIS_POOL_TIMEOUT_SECONDS for a free connection, then gets 503 `busy`: back-pressure, not an outage.
    REDIS_POOL_SIZE: int = Field(50, ge=1, le=10_000)
    REDIS_POOL_TIMEOUT_SECONDS: float = Field(2.0, gt=0, le=60)
    # How often each instance re-reads the payments its sockets track and still wait on, and sends
    # what a socket has not seen (a safety net for pub/sub messages lost without a reconnect).
    RESYNC_INTERVAL_SECONDS: float = Field(10.0, gt=0, le=3600)

    @field_validator("FRONTEND_URL", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            origins = [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
            if not origins:
                raise ValueError("at least one origin is required")
            return origins
        return value

    @field_validator("FRONTEND_URL")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*":
                continue
            if not origin.startswith(("http://", "https://")):
                raise ValueError(f"{origin!r} is not an http(s) origin")
            # What a browser sends as Origin has none of these: an entry with one would never match (a page
            # URL where its origin was meant), and its page be refused by a server that started fine.
            parts = urlsplit(origin)
            if parts.path or parts.query or parts.fragment or "@" in parts.netloc or not parts.hostname:
                raise ValueError(
                    f"{origin!r} is not an origin: give scheme://host[:port] as a browser sends it (no path, "
                    "query or user info)"
                )
        return value

    @field_validator("MERCHANT_WEBHOOK_URL", "MERCHANT_WEBHOOK_EVENTS", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("CAMPAY_WEBHOOK_ALLOWED_IPS", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        networks = []
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(
                    f"{part!r} is not an IP address or CIDR range (e.g. 203.0.113.7, 203.0.113.0/24)"
                ) from None
        return networks

    @field_validator("MERCHANT_WEBHOOK_URL")
    @classmethod
    def _check_merchant_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        repeated = sorted({url for url in value if value.count(url) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once")
        return value

    @field_validator("MERCHANT_WEBHOOK_EVENTS")
    @classmethod
    def _check_merchant_events(cls, value: list[str]) -> list[str]:
        allowed = set(get_args(MerchantEvent))
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise ValueError(f"unknown event type(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        return value

    @field_validator("MERCHANT_WEBHOOK_SECRET")
    @classmethod
    def _check_merchant_secret(cls, value: str) -> str:
        if value:
            endpoint_secrets(value)
        return value

    @field_validator("METRICS_TOKEN")
    @classmethod
    def _check_metrics_token(cls, value: str) -> str:
        if value and (len(value) < 16 or any(c.isspace() for c in value)):
            raise ValueError("must be at least 16 characters with no whitespace")
        return value

    @field_validator(
        "RATE_LIMIT_INITIATE_PER_USER",
        "RATE_LIMIT_INITIATE_PER_IP",
        "RATE_LIMIT_WEBHOOK_PER_IP",
        "RATE_LIMIT_CONNECT_PER_IP",
        "RATE_LIMIT_CALLS_PER_SOCKET",
    )
    @classmethod
    def _check_rate(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate like '10/minute'") from None
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
            raise ValueError("must start with redis://, rediss://, unix:// or redis+sentinel://")
        return value

    @field_validator("CAMPAY_API_URL")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _environment_defaults(self) -> Settings:
        """Fill the defaults that depend on APP_ENV, then check the rules that span settings.

        Every broken rule is collected before raising, so one run names them all.
        """
        production = self.APP_ENV is AppEnv.PRODUCTION
        if self.HOST is None:
            self.HOST = "0.0.0.0" if production else "127.0.0.1"
        if self.STORAGE_BACKEND is None:
            self.STORAGE_BACKEND = StorageBackend.REDIS if production else StorageBackend.MEMORY
        if self.PAYMENT_PROVIDER is None:
            self.PAYMENT_PROVIDER = ProviderName.CAMPAY if production else ProviderName.SANDBOX
        if self.SIMULATE_ENABLED is None:
            self.SIMULATE_ENABLED = not production
        if self.TEST_PAGE_ENABLED is None:
            self.TEST_PAGE_ENABLED = not production
        problems: list[Problem] = []

        def problem(variable: str, message: str) -> None:
            problems.append(Problem(variable, message))

        if self.AUTH_MODE is None:
            if production:
                problem("AUTH_MODE", "AUTH_MODE must be jwt or introspect in production")
            self.AUTH_MODE = AuthMode.NONE
        elif production and self.AUTH_MODE is AuthMode.NONE:
            problem("AUTH_MODE", "AUTH_MODE=none is refused in production; use jwt or introspect")
        if self.AUTH_MODE is AuthMode.JWT and not (self.JWT_SECRET or self.JWT_PUBLIC_KEY):
            problem("JWT_SECRET", "JWT_SECRET or JWT_PUBLIC_KEY is required when AUTH_MODE=jwt")
        if self.AUTH_MODE is AuthMode.INTROSPECT and not self.AUTH_SERVICE_URL.startswith(("http://", "https://")):
            problem("AUTH_SERVICE_URL", "AUTH_SERVICE_URL (http or https) is required when AUTH_MODE=introspect")
        if self.LINK_LIFETIME_SECONDS is None:
            self.LINK_LIFETIME_SECONDS = min(600.0, self.RECONCILE_MAX_AGE_SECONDS / 2)
        if self.RECONCILE_ENABLED and self.LINK_LIFETIME_SECONDS >= self.RECONCILE_MAX_AGE_SECONDS:
            problem(
                "LINK_LIFETIME_SECONDS",
                "LINK_LIFETIME_SECONDS must stay under RECONCILE_MAX_AGE_SECONDS: the reconciler stops asking "
                "about a payment that old, and a link nobody paid would stay PENDING instead of EXPIRED",
            )
        if self.MIN_AMOUNT > self.MAX_AMOUNT:
            problem("MIN_AMOUNT", "MIN_AMOUNT must not exceed MAX_AMOUNT")
        if self.REDIS_WAIT_REPLICAS and self.REDIS_WAIT_TIMEOUT_MS >= self.REDIS_TIMEOUT_SECONDS * 1000 / 2:
            problem(
                "REDIS_WAIT_TIMEOUT_MS",
                "REDIS_WAIT_TIMEOUT_MS must stay under half of REDIS_TIMEOUT_SECONDS: a WAIT that outlasts the "
                "command timeout would read as Redis being away (degraded mode) whenever a replica is away",
            )
        if self.REDIS_CLUSTER and not self.redis_url.startswith(("redis://", "rediss://")):
            problem("REDIS_CLUSTER", "REDIS_CLUSTER=true needs a redis:// or rediss:// REDIS_URL naming one node")
        if self.MERCHANT_WEBHOOK_URL and not self.MERCHANT_WEBHOOK_SECRET:
            problem("MERCHANT_WEBHOOK_SECRET", "MERCHANT_WEBHOOK_SECRET is required when MERCHANT_WEBHOOK_URL is set")
        elif self.MERCHANT_WEBHOOK_URL:
            given, urls = len(endpoint_secrets(self.MERCHANT_WEBHOOK_SECRET)), len(self.MERCHANT_WEBHOOK_URL)
            if given != urls:
                problem(
                    "MERCHANT_WEBHOOK_SECRET",
                    f"gives secrets for {given} endpoint{'s' if given != 1 else ''} and there "
                    f"{'are' if urls != 1 else 'is'} {urls} MERCHANT_WEBHOOK_URL{'s' if urls != 1 else ''}: give each "
                    "URL its own secret, in the same order, comma-separated (during a rotation, one URL's secrets "
                    "space-separated)",
                )
        if production and not self.MERCHANT_WEBHOOK_ALLOW_PRIVATE:
            for url in self.MERCHANT_WEBHOOK_URL:
                for refusal in literal_refusals(url):
                    problem("MERCHANT_WEBHOOK_URL", refusal)
        if self.PAYMENT_PROVIDER is ProviderName.CAMPAY:
            if not self.CAMPAY_PERMANENT_ACCESS_TOKEN and not (self.CAMPAY_USERNAME and self.CAMPAY_APP_PASSWORD):
                problem(
                    "CAMPAY_APP_PASSWORD" if self.CAMPAY_USERNAME else "CAMPAY_PERMANENT_ACCESS_TOKEN",
                    "CAMPAY_PERMANENT_ACCESS_TOKEN or CAMPAY_USERNAME and CAMPAY_APP_PASSWORD are required "
                    "when PAYMENT_PROVIDER=campay",
                )
            if not self.CAMPAY_WEBHOOK_KEY:
                problem("CAMPAY_WEBHOOK_KEY", "CAMPAY_WEBHOOK_KEY is required when PAYMENT_PROVIDER=campay")
        if production and not self.WEBHOOK_VERIFY_WITH_PROVIDER and not self.CAMPAY_WEBHOOK_SIGNATURE_BINDS_STATUS:
            problem(
                "WEBHOOK_VERIFY_WITH_PROVIDER",
                "WEBHOOK_VERIFY_WITH_PROVIDER=false is refused in production: CamPay's signature binds the "
                "reference but not the status, so the status applied would be whatever the callback (or "
                "anyone replaying its signature) claims. Keep it true (CamPay's own answer is applied), or set "
                "CAMPAY_WEBHOOK_SIGNATURE_BINDS_STATUS=true if your CamPay signatures carry a status claim",
            )
        if production:
            for name in ("JWT_SECRET", "CAMPAY_WEBHOOK_KEY"):
                value: str = getattr(self, name)
                if value and len(value.encode()) < MIN_PRODUCTION_SECRET_BYTES:
                    problem(
                        name,
                        f"must be at least {MIN_PRODUCTION_SECRET_BYTES} bytes in production (an HS256 key "
                        "shorter than the hash can be guessed offline from one signed token)",
                    )
        if problems:
            raise ConfigurationProblems(problems)
        return self

    @property
    def is_production(self) -> bool:
        return self.APP_ENV is AppEnv.PRODUCTION

    @property
    def link_lifetime(self) -> float:
        """LINK_LIFETIME_SECONDS as set, or its default (filled in when the settings are read)."""
        return self.LINK_LIFETIME_SECONDS if self.LINK_LIFETIME_SECONDS is not None else 600.0

    @property
    def merchant_endpoints(self) -> dict[str, tuple[bytes, ...]]:
        """Each MERCHANT_WEBHOOK_URL and the keys that sign its messages (two or more during a rotation)."""
        if not self.MERCHANT_WEBHOOK_URL:
            return {}
        keys = endpoint_secrets(self.MERCHANT_WEBHOOK_SECRET)
        return dict(zip(self.MERCHANT_WEBHOOK_URL, keys, strict=True))

    @property
    def merchant_public_only(self) -> bool:
        """Whether merchant webhooks may go to public addresses only (production, unless allowed)."""
        return self.is_production and not self.MERCHANT_WEBHOOK_ALLOW_PRIVATE

    @property
    def redis_url(self) -> str:
        """REDIS_URL when given, otherwise one built from REDIS_HOST/PORT/PASSWORD/DB."""
        if self.REDIS_URL:
            return self.REDIS_URL
        auth = f":{quote(self.REDIS_PASSWORD, safe='')}@" if self.REDIS_PASSWORD else ""
        return f"redis://{auth}{self.REDIS_HOST}:{self.REDIS_PORT}/{self.REDIS_DB}"

    def effective(self) -> dict[str, str]:
        """Every setting as an operator would write it in `.env`, secrets masked (for `--check`)."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            shown[name] = _masked(name, getattr(self, name))
        return shown


def _plain(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_plain(v) for v in value)
    return str(value)


def _masked(name: str, value: object) -> str:
    text = _plain(value)
    if name not in SECRET_SETTINGS or not text:
        return text
    if name == "REDIS_URL":
        parts = urlsplit(text)
        if parts.password is None:
            return text
        host = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    return f"****** (set, {len(text.encode())} bytes)"


class SettingsError(Exception):
    """Every problem in the configuration, each naming its variable and what it expects."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems

    def report(self) -> str:
        count = len(self.problems)
        lines = [f"{count} configuration problem{'s' if count != 1 else ''} (settings: README.md, .env.example):"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def _problems(exc: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        carried = (err.get("ctx") or {}).get("error")
        if isinstance(carried, ConfigurationProblems):
            problems.extend(carried.problems)
            continue
        variable = str(err["loc"][0]) if err["loc"] else "configuration"
        message = err["msg"].removeprefix("Value error, ")
        given = err.get("input")
        if variable not in SECRET_SETTINGS and isinstance(given, (str, int, float)) and err["type"] != "missing":
            message += f" (got {given!r})"
        problems.append(Problem(variable, message))
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, `.env` and `overrides`, or raise every problem at once.

    Pydantic checks each variable first and runs the rules that span settings
    only when they all pass; so when some fail, the rules are run again with
    those variables at their defaults, and what they find about the others is
    reported in the same run.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = _problems(exc)
    invalid = {p.variable for p in problems}
    fields = Settings.model_fields
    defaults = {name: fields[name].get_default(call_default_factory=True) for name in invalid if name in fields}
    if defaults:
        try:
            Settings(**{**overrides, **defaults})
        except ValidationError as again:
            problems += [p for p in _problems(again) if p.variable not in invalid]
    raise SettingsError(problems)


SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
