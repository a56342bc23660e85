"""Cross-cutting protections: the content security policy on every response, and login throttling.

Failed logins are counted in the cache (shared by every web process: the database cache on the
embedded default, Redis when it is set), per source address and per user name, so neither many
names from one address nor one name from many addresses can be tried at speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import import_module
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django import forms
from django.conf import settings
from django.contrib.auth import get_user, get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import DisallowedHost, PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port, validate_host
from django.utils import timezone


def content_security_policy(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[..., HttpResponse]:
    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        if "Content-Security-Policy" not in response.headers:
            response.headers["Content-Security-Policy"] = policy_for(request)
        return response

    return middleware


def policy_for(request: HttpRequest) -> str:
    """The policy, with the page's own socket origin (scheme, host and port) allowed to connect."""
    try:
        host = request.get_host()
    except DisallowedHost:
        return f"{settings.CONTENT_SECURITY_POLICY}; connect-src 'self'"
    scheme = "wss" if request.is_secure() else "ws"
    return f"{settings.CONTENT_SECURITY_POLICY}; connect-src 'self' {scheme}://{host}"


# --- login throttling --------------------------------------------------------------------------


@dataclass
class Failures:
    count: int = 0
    last: float = 0.0  # when the last one happened (time.time())


def _key(kind: str, value: str) -> str:
    return f"login-failures:{kind}:{value}"


def _read(key: str, now: float) -> Failures:
    raw = cache.get(key)
    failures = Failures(*raw) if isinstance(raw, list | tuple) and len(raw) == 2 else Failures()
    # A lock-out that has run out starts the count again.
    if failures.count and now - failures.last >= settings.LOGIN_LOCK_SECONDS:
        return Failures()
    return failures


def _wait(failures: Failures) -> float:
    """Seconds from the last failure before the next try may be made."""
    if failures.count >= settings.LOGIN_LOCK_AFTER:
        return float(settings.LOGIN_LOCK_SECONDS)
    if failures.count >= settings.LOGIN_SLOW_AFTER:
        return float(2 ** (failures.count - settings.LOGIN_SLOW_AFTER))
    return 0.0


def _at(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).astimezone(timezone.get_current_timezone()).strftime("%H:%M:%S %Z")


class Attempt:
    """One try at logging in, from a source address (None when unknown) with a user name."""

    def __init__(self, source: str | None, name: str) -> None:
        self.keys = {"source": _key("source", source)} if source else {}
        self.keys["name"] = _key("name", name.strip().lower()[:150])

    def refusal(self) -> str:
        """Why this try is refused before the password is even looked at, or ""."""
        now = time.time()
        for kind, key in self.keys.items():
            failures = _read(key, now)
            until = failures.last + _wait(failures)
            if until <= now:
                continue
            who = "this address" if kind == "source" else "this user name"
            if failures.count >= settings.LOGIN_LOCK_AFTER:
                return (
                    f"Login is locked for {who} after {failures.count} failed tries, until {_at(until)}. "
                    "Wait until then, or ask the administrator (manage.py changepassword)."
                )
            return (
                f"Too many failed logins for {who}: wait {until - now:.0f} s before trying again "
                f"(until {_at(until)}); each further failure doubles the wait."
            )
        return ""

    def failed(self) -> None:
        now = time.time()
        for key in self.keys.values():
            failures = _read(key, now)
            cache.set(key, (failures.count + 1, now), timeout=int(settings.LOGIN_LOCK_SECONDS) + 60)

    def succeeded(self) -> None:
        cache.delete_many(list(self.keys.values()))


def source(request: HttpRequest | None) -> str | None:
    return request.META.get("REMOTE_ADDR") if request is not None else None


class ThrottledBackend(ModelBackend):
    """The usual user name and password check, behind the throttle: every way to log in passes here."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Any:
        name = username if username is not None else kwargs.get(get_user_model().USERNAME_FIELD)
        attempt = Attempt(source(request), str(name or ""))
        refused = attempt.refusal()
        if refused:
            if request is not None:
                request.login_refused = refused  # type: ignore[attr-defined]
            raise PermissionDenied(refused)  # stops every other backend too
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            attempt.failed()
        else:
            attempt.succeeded()
        return user


class LoginForm(AuthenticationForm):
    """The login form, saying why a try was refused by the throttle instead of "wrong password"."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That user name and password do not match. Try again.",
    }

    def get_invalid_login_error(self) -> forms.ValidationError:
        refused = getattr(self.request, "login_refused", "")
        if refused:
            return forms.ValidationError(refused, code="throttled")
        return super().get_invalid_login_error()


# --- live sockets ------------------------------------------------------------------------------


def _origin(scheme: str, netloc: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with the scheme's default port filled in, or None if it is no origin."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.scheme not in ("http", "https"):
        return None
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _trusted(origin: tuple[str, str, int | None]) -> bool:
    for pattern in settings.CSRF_TRUSTED_ORIGINS:
        scheme, _, netloc = pattern.partition("://")
        wildcard = netloc.startswith("*.")
        trusted = _origin(scheme, netloc[1:] if wildcard else netloc)
        if trusted is None or trusted[0] != origin[0] or trusted[2] != origin[2]:
            continue
        if origin[1] == trusted[1] or (wildcard and origin[1].endswith(trusted[1])):
            return True
    return False


def same_origin(origin: str, host: str, scheme: str) -> bool:
    """A socket's Origin is the page's own: the scheme, host and port its Host header says
    (http for ws, https for wss), or one of CSRF_TRUSTED_ORIGINS; and Host is an allowed host."""
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    scheme_, _, netloc = origin.partition("://")
    theirs = _origin(scheme_.lower(), netloc)
    ours = _origin("https" if scheme == "wss" else "http", host)
    return theirs is not None and (theirs == ours or _trusted(theirs))


class SameOriginOnly:
    """Lets through only sockets opened by this server's own pages (see same_origin); others are
    refused at the handshake (HTTP 403), before any session is looked at."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        headers = {name: value.decode("latin-1") for name, value in reversed(scope.get("headers", []))}
        if same_origin(headers.get(b"origin", ""), headers.get(b"host", ""), scope.get("scheme", "ws")):
            return await self.app(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


def still_logged_in(session_key: str | None, user_pk: Any) -> bool:
    """Whether a socket's session still logs in the same user: not logged out, not expired, the
    user not deactivated and the password not changed since."""
    if not session_key:
        return False
    engine = import_module(settings.SESSION_ENGINE)
    user = get_user(SimpleNamespace(session=engine.SessionStore(session_key)))  # type: ignore[arg-type]
    return bool(user.is_authenticated and user.pk == user_pk)


def session_group(session_key: str) -> str:
    """The Channels group of the sockets a session opened: logging out closes them at once."""
    return f"session-{session_key}"
