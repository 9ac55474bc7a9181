"""Logins of the configured users, session cookies and the two roles (viewer, operator)."""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request, status

from service.api.passwords import verify_password
from service.settings import ApiSettings

__all__ = ["SESSION_COOKIE", "Sessions", "User"]

SESSION_COOKIE = "cordt1_session"
#: After this many wrong passwords in a row for one name, that name waits LOCKOUT_S.
MAX_FAILURES = 5
LOCKOUT_S = 60.0


@dataclass(frozen=True)
class User:
    """Who is logged in."""

    name: str
    role: str

    @property
    def may_act(self) -> bool:
        """Operators may retry jobs and pause or resume the service."""
        return self.role == "operator"


class Sessions:
    """Server-side login sessions (random tokens; gone when the service restarts).

    Parameters
    ----------
    settings : ApiSettings
        The configured users and the session lifetime.
    """

    def __init__(self, settings: ApiSettings) -> None:
        self._users = {user.name: user for user in settings.users}
        self._lifetime_s = settings.session_hours * 3600
        self._sessions: dict[str, tuple[User, float]] = {}
        self._failures: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def locked_for_s(self, name: str) -> float:
        """Seconds ``name`` must still wait after too many wrong passwords (0: may try)."""
        with self._lock:
            count, last = self._failures.get(name, (0, 0.0))
        if count < MAX_FAILURES:
            return 0.0
        return max(0.0, last + LOCKOUT_S - time.time())

    def record_login(self, name: str, succeeded: bool) -> None:
        """Count consecutive failed logins of ``name`` (a success resets the count)."""
        with self._lock:
            if succeeded:
                self._failures.pop(name, None)
            else:
                count, _ = self._failures.get(name, (0, 0.0))
                self._failures[name] = (count + 1, time.time())

    def check_password(self, name: str, password: str) -> User | None:
        """The user if ``name`` is configured and ``password`` matches, else None."""
        user = self._users.get(name)
        if user is None:
            # Same work as a real check, so timing does not tell which names exist.
            verify_password(password, _DUMMY_HASH)
            return None
        if not verify_password(password, user.password_hash):
            return None
        return User(name=user.name, role=user.role)

    def open(self, user: User) -> str:
        """A new session token for ``user``."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            self._sessions = {t: s for t, s in self._sessions.items() if s[1] > now}
            self._sessions[token] = (user, now + self._lifetime_s)
        return token

    def close(self, token: str) -> None:
        """End a session (logout)."""
        with self._lock:
            self._sessions.pop(token, None)

    def user(self, token: str) -> User | None:
        """The user of a live session."""
        with self._lock:
            found = self._sessions.get(token)
        if found is None or found[1] <= time.time():
            return None
        return found[0]

    @property
    def lifetime_s(self) -> int:
        """Seconds a session lasts (also the cookie's Max-Age)."""
        return int(self._lifetime_s)

    def from_request(self, request: Request) -> User:
        """The user of the session cookie or HTTP Basic credentials.

        Raises
        ------
        HTTPException
            401 when neither is present and valid; 429 for a name locked after too many
            wrong passwords.
        """
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            user = self.user(token)
            if user is not None:
                return user
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                name, password = "", ""
            if name and self.locked_for_s(name) > 0:
                raise HTTPException(
                    status.HTTP_429_TOO_MANY_REQUESTS, "too many wrong passwords: try later"
                )
            user = self.check_password(name, password) if name else None
            if name:
                self.record_login(name, user is not None)
            if user is not None:
                return user
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "log in first")


_DUMMY_HASH = (
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
)
