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
            name = ".".join(str(part) for part in err["loc"]) or "settings"
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("invalid setting " + "; ".join(problems)) from None
