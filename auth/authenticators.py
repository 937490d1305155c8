"""Who is calling: bearer tokens checked locally (JWT) or by the merchant's auth service.

Every mode answers the same question, `authenticate(token) -> Identity`, and
raises `Unauthenticated` (401: the token is bad) or `AuthUnavailable` (503: we
could not find out). The difference matters to a checkout page: a 401 means
"log in again", a 503 means "try again in a moment".
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import jwt

from core.clock import Clock
from core.settings import AuthMode, Settings
from payments.access import ADMIN_SCOPE, Authenticator, AuthUnavailable, Identity, Unauthenticated

log = logging.getLogger("paytrack.auth")

# RFC 6750's b64token: what a bearer token may be made of, in JWT and opaque form alike.
_TOKEN_SYNTAX = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def _well_formed(token: str | None) -> str:
    """The token, if it is present and made of bearer-token characters; else 401.

    Checked before anything decodes, hashes or forwards it: a lone UTF-16
    surrogate from a socket's auth payload once raised deep inside the JWT
    library and the client never heard back.
    """
    if not token:
        raise Unauthenticated("a bearer token is required")
    if len(token) > 8192 or not _TOKEN_SYNTAX.fullmatch(token):
        raise Unauthenticated("the token is malformed", code="invalid_token")
    return token


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    raw = claims.get("scope", claims.get("scopes", ""))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        return frozenset(str(s) for s in raw)
    return frozenset()


def _expiry(claims: dict[str, Any]) -> datetime | None:
    exp = claims.get("exp")
    if isinstance(exp, (int, float)):
        return datetime.fromtimestamp(exp, UTC)
    return None


class NoAuth:
    """Development only: nobody is checked, every payment is everyone's."""

    mode = "none"

    async def authenticate(self, token: str | None) -> Identity | None:
        return None

    async def close(self) -> None:
        return None


class JwtAuthenticator:
    """Tokens issued by the merchant's auth service, verified here with PyJWT."""

    mode = "jwt"
    LEEWAY_SECONDS = 30

    def __init__(self, *, secret: str = "", public_key: str = "", audience: str = "", issuer: str = "") -> None:
        if public_key:
            self._key: str = public_key
            self._algorithms = ["RS256", "ES256"]
        else:
            self._key = secret
            self._algorithms = ["HS256"]
        self._audience = audience or None
        self._issuer = issuer or None

    async def authenticate(self, token: str | None) -> Identity:
        token = _well_formed(token)
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self.LEEWAY_SECONDS,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", code="token_expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is not meant for this service", code="invalid_token") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token's issuer is not trusted", code="invalid_token") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is invalid: {exc.__class__.__name__}", code="invalid_token") from None
        return Identity(user_id=str(claims["sub"]), scopes=_scopes(claims), expires_at=_expiry(claims))

    async def close(self) -> None:
        return None


class AuthCache(Protocol):
    async def auth_cache_get(self, key: str) -> str | None: ...

    async def auth_cache_set(self, key: str, value: str, ttl_seconds: float) -> None: ...


def token_cache_key(token: str) -> str:
    """What the cache is keyed on: a SHA-256 of the token, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


class IntrospectionAuthenticator:
    """Opaque tokens, checked by calling AUTH_SERVICE_URL; verified users cached by token hash.

    The auth service answers `GET AUTH_SERVICE_URL` (with the caller's
    `Authorization: Bearer <token>`) with 200 `{"sub" | "user_id" | "id", "scope"?, "exp"?}`
    or 401. A cache outage never refuses a good token (we ask the service);
    an auth-service outage never refuses a cached one (until its entry expires).
    """

    mode = "introspect"

    def __init__(
        self,
        url: str,
        cache: AuthCache,
        clock: Clock,
        *,
        cache_ttl: float,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url
        self._cache = cache
        self._clock = clock
        self._ttl = cache_ttl
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout), transport=transport)

    async def _cached(self, key: str) -> Identity | None:
        try:
            raw = await self._cache.auth_cache_get(key)
        except Exception as exc:  # a cache outage must not refuse a good token
            log.warning("auth cache unreachable; asking the auth service", extra={"error": str(exc)})
            return None
        if raw is None:
            return None
        identity = Identity.model_validate_json(raw)
        if identity.expires_at is not None and identity.expires_at <= self._clock.now():
            return None
        return identity

    async def authenticate(self, token: str | None) -> Identity:
        token = _well_formed(token)
        key = token_cache_key(token)
        cached = await self._cached(key)
        if cached is not None:
            return cached
        try:
            response = await self._http.get(self._url, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise AuthUnavailable(f"the auth service could not be reached ({exc.__class__.__name__})") from None
        if response.status_code in (401, 403):
            raise Unauthenticated("the token was rejected by the auth service", code="invalid_token")
        if not response.is_success:
            raise AuthUnavailable(f"the auth service answered {response.status_code}")
        try:
            body = response.json()
            user_id = str(body.get("sub") or body.get("user_id") or body.get("id") or "")
        except (ValueError, AttributeError):
            user_id = ""
            body = {}
        if not user_id:
            raise AuthUnavailable("the auth service's answer has no user id")
        identity = Identity(user_id=user_id, scopes=_scopes(body), expires_at=_expiry(body))
        ttl = self._ttl
        if identity.expires_at is not None:
            ttl = min(ttl, (identity.expires_at - self._clock.now()).total_seconds())
        if ttl > 0:
            try:
                await self._cache.auth_cache_set(key, identity.model_dump_json(), ttl)
            except Exception as exc:
                log.warning("auth cache unreachable; user not cached", extra={"error": str(exc)})
        return identity

    async def close(self) -> None:
        await self._http.aclose()


__all__ = [
    "ADMIN_SCOPE",
    "AuthUnavailable",
    "Authenticator",
    "Identity",
    "IntrospectionAuthenticator",
    "JwtAuthenticator",
    "NoAuth",
    "Unauthenticated",
    "token_cache_key",
]


def create_authenticator(settings: Settings, cache: AuthCache, clock: Clock) -> Authenticator:
    """The authenticator AUTH_MODE names; introspection answers are cached in `cache` (shared storage)."""
    if settings.AUTH_MODE is AuthMode.JWT:
        return JwtAuthenticator(
            secret=settings.JWT_SECRET,
            public_key=settings.JWT_PUBLIC_KEY,
            audience=settings.JWT_AUDIENCE,
            issuer=settings.JWT_ISSUER,
        )
    if settings.AUTH_MODE is AuthMode.INTROSPECT:
        return IntrospectionAuthenticator(
            settings.AUTH_SERVICE_URL, cache, clock, cache_ttl=settings.AUTH_CACHE_TTL_SECONDS
        )
    return NoAuth()
