"""Configuration, read once at start from the environment and `.env`.

Every setting the server reads is declared here (and documented in
`.env.example`), so a typo or a bad value stops the server at start with a
message naming the variable instead of failing later on a live payment.
"""

from __future__ import annotations

import os
import socket
import uuid
from enum import Enum
from typing import Annotated, Literal
from urllib.parse import quote

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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


class Settings(BaseSettings):
    """All server settings. Field names are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
    )

    APP_ENV: AppEnv = AppEnv.DEVELOPMENT
    HOST: str = "0.0.0.0"
    PORT: int = Field(5000, ge=0, le=65535)
    INSTANCE_ID: str = Field(default_factory=_default_instance_id)
    # How often this instance refreshes its heartbeat in Redis; after three missed beats the
    # connections it recorded count as a crashed instance's and are removed.
    INSTANCE_HEARTBEAT_SECONDS: float = Field(10.0, gt=0, le=300)
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Comma-separated list of origins allowed by CORS and by Socket.IO.
    FRONTEND_URL: Annotated[list[str], NoDecode] = ["http://localhost:3000"]

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

    CAMPAY_TIMEOUT_SECONDS: float = Field(10.0, gt=0, le=120)
    CAMPAY_RETRY_ATTEMPTS: int = Field(4, ge=1, le=10)
    CAMPAY_RETRY_BASE_SECONDS: float = Field(0.5, ge=0, le=30)
    WEBHOOK_VERIFY_WITH_PROVIDER: bool = True

    RECONCILE_ENABLED: bool = True
    RECONCILE_AFTER_SECONDS: float = Field(60, ge=0)
    RECONCILE_INTERVAL_SECONDS: float = Field(15, gt=0)
    RECONCILE_MAX_AGE_SECONDS: float = Field(900, gt=0)

    # Outbound webhooks to the merchant's backend (none = off).
    MERCHANT_WEBHOOK_URL: Annotated[list[str], NoDecode] = []
    MERCHANT_WEBHOOK_SECRET: str = ""
    MERCHANT_WEBHOOK_EVENTS: Annotated[list[str], NoDecode] = ["payment.succeeded", "payment.failed"]
    MERCHANT_WEBHOOK_TIMEOUT_SECONDS: float = Field(10.0, gt=0, le=60)
    MERCHANT_WEBHOOK_MAX_ATTEMPTS: int = Field(12, ge=1, le=50)
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
    MAX_TRACKED_PER_SOCKET: int = Field(50, gt=0)
    # Engine.IO sessions that have not sent Socket.IO's CONNECT: at most this many per address
    # (429 over it), each closed after SOCKET_CONNECT_TIMEOUT_SECONDS.
    MAX_ANONYMOUS_SESSIONS_PER_IP: int = Field(20, gt=0, le=10_000)
    SOCKET_CONNECT_TIMEOUT_SECONDS: float = Field(5.0, gt=0, le=120)
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
    # Prepended to every Redis key, so deployments (or tests) can share one Redis.
    REDIS_KEY_PREFIX: str = Field("paytrack:", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:{}-]+$")
    # Pub/sub channel the Socket.IO manager uses; the same on every instance of one deployment.
    SOCKETIO_CHANNEL: str = Field("paytrack-socketio", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    # While Redis is unreachable: how often to try again (and how often a healthy Redis is pinged).
    REDIS_RECONNECT_INTERVAL_SECONDS: float = Field(2.0, gt=0, le=300)
    # Connect and command timeout for storage calls, and the bound on one pub/sub publish.
    REDIS_TIMEOUT_SECONDS: float = Field(2.0, gt=0, le=60)
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
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"{origin!r} is not an http(s) origin")
        return value

    @field_validator("MERCHANT_WEBHOOK_URL", "MERCHANT_WEBHOOK_EVENTS", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("MERCHANT_WEBHOOK_URL")
    @classmethod
    def _check_merchant_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return value

    @field_validator("MERCHANT_WEBHOOK_EVENTS")
    @classmethod
    def _check_merchant_events(cls, value: list[str]) -> list[str]:
        allowed = {"payment.succeeded", "payment.failed", "payment.initiated"}
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise ValueError(f"unknown event type(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        return value

    @field_validator("MERCHANT_WEBHOOK_SECRET")
    @classmethod
    def _check_merchant_secret(cls, value: str) -> str:
        if value:
            from merchant.message import decode_secret

            decode_secret(value)
        return value

    @field_validator("METRICS_TOKEN")
    @classmethod
    def _check_metrics_token(cls, value: str) -> str:
        if value and (len(value) < 16 or any(c.isspace() for c in value)):
            raise ValueError("must be at least 16 characters with no whitespace")
        return value

    @field_validator(
        "RATE_LIMIT_INITIATE_PER_USER", "RATE_LIMIT_INITIATE_PER_IP", "RATE_LIMIT_WEBHOOK_PER_IP",
        "RATE_LIMIT_CONNECT_PER_IP",
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
    def _environment_defaults(self) -> "Settings":
        production = self.APP_ENV is AppEnv.PRODUCTION
        if self.STORAGE_BACKEND is None:
            self.STORAGE_BACKEND = StorageBackend.REDIS if production else StorageBackend.MEMORY
        if self.PAYMENT_PROVIDER is None:
            self.PAYMENT_PROVIDER = ProviderName.CAMPAY if production else ProviderName.SANDBOX
        if self.SIMULATE_ENABLED is None:
            self.SIMULATE_ENABLED = not production
        if self.TEST_PAGE_ENABLED is None:
            self.TEST_PAGE_ENABLED = not production
        if self.AUTH_MODE is None:
            if production:
                raise ValueError("AUTH_MODE must be jwt or introspect in production")
            self.AUTH_MODE = AuthMode.NONE
        if production and self.AUTH_MODE is AuthMode.NONE:
            raise ValueError("AUTH_MODE=none is refused in production; use jwt or introspect")
        if self.AUTH_MODE is AuthMode.JWT and not (self.JWT_SECRET or self.JWT_PUBLIC_KEY):
            raise ValueError("JWT_SECRET or JWT_PUBLIC_KEY is required when AUTH_MODE=jwt")
        if self.AUTH_MODE is AuthMode.INTROSPECT and not self.AUTH_SERVICE_URL.startswith(("http://", "https://")):
            raise ValueError("AUTH_SERVICE_URL (http or https) is required when AUTH_MODE=introspect")
        if self.MIN_AMOUNT > self.MAX_AMOUNT:
            raise ValueError("MIN_AMOUNT must not exceed MAX_AMOUNT")
        if self.MERCHANT_WEBHOOK_URL and not self.MERCHANT_WEBHOOK_SECRET:
            raise ValueError("MERCHANT_WEBHOOK_SECRET is required when MERCHANT_WEBHOOK_URL is set")
        if self.PAYMENT_PROVIDER is ProviderName.CAMPAY:
            if not self.CAMPAY_PERMANENT_ACCESS_TOKEN and not (self.CAMPAY_USERNAME and self.CAMPAY_APP_PASSWORD):
                raise ValueError(
                    "CAMPAY_PERMANENT_ACCESS_TOKEN or CAMPAY_USERNAME and CAMPAY_APP_PASSWORD are required "
                    "when PAYMENT_PROVIDER=campay"
                )
            if not self.CAMPAY_WEBHOOK_KEY:
                raise ValueError("CAMPAY_WEBHOOK_KEY is required when PAYMENT_PROVIDER=campay")
        return self

    @property
    def is_production(self) -> bool:
        return self.APP_ENV is AppEnv.PRODUCTION

    @property
    def redis_url(self) -> str:
        """REDIS_URL when given, otherwise one built from REDIS_HOST/PORT/PASSWORD/DB."""
        if self.REDIS_URL:
            return self.REDIS_URL
        auth = f":{quote(self.REDIS_PASSWORD, safe='')}@" if self.REDIS_PASSWORD else ""
        return f"redis://{auth}{self.REDIS_HOST}:{self.REDIS_PORT}/{self.REDIS_DB}"


class SettingsError(Exception):
    """Raised with a one-line, human-readable message naming the bad variable."""


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, `.env` and `overrides`.

    Turns pydantic's multi-line report into one line per the brief: the first
    failing variable, its value problem, nothing else.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            name = ".".join(str(part) for part in err["loc"])
            problems.append(f"{name}: {message}" if name else message)
        raise SettingsError("invalid setting " + "; ".join(problems)) from None
