"""The client secrets this process minted, until they expire: issued, looked up, counted.

The secrets are random (`secrets.token_urlsafe`, 256 bits) and live in a bounded store in this
process, not signed self-contained tokens: the session configuration a secret carries (long
instructions among it) stays on the server instead of travelling in a WebSocket header, and
nothing but the store is trusted. The price is that a secret is valid only on the server process
that minted it: behind a load balancer with several replicas, mint and connect on the same one
(sticky routing). The store keys secrets by their SHA-256, so neither a lookup's timing nor
the store's memory gives a secret away. It holds at most `max_active` unexpired secrets; one
more is refused with 429 until the soonest expires (dropping a live secret instead would break
a page that holds it).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from voxgate.streaming.config import SessionConfig

PREFIX = "ek_"
"""OpenAI's prefix of ephemeral keys; clients that check the shape of a key expect it."""


@dataclass(frozen=True, slots=True)
class ClientSecret:
    value: str
    expires_at: int
    """Unix time (seconds) after which it opens no more sessions."""
    deadline: float
    """The same moment on the store's monotonic clock (what validity is checked against)."""
    config: SessionConfig
    """The initial configuration of each session it opens."""


class ClientSecretsFull(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many unexpired client secrets; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class ClientSecretStore:
    """The client secrets this process issued, until they expire; at most `max_active`."""

    def __init__(
        self,
        max_active: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_sessions: int = 2,
    ) -> None:
        self.max_active = max_active
        self.max_sessions = max_sessions
        """Sessions one secret may hold open at once."""
        self.clock = clock
        self.wall_clock = wall_clock
        self._by_digest: dict[bytes, ClientSecret] = {}
        self._open: dict[bytes, int] = {}
        """Sessions open per secret (also after it expired: a session outlives its secret)."""

    def open_session(self, secret: ClientSecret) -> bool:
        """Count a session opened with `secret`; False (and nothing counted) at its cap."""
        digest = _digest(secret.value)
        if self._open.get(digest, 0) >= self.max_sessions:
            return False
        self._open[digest] = self._open.get(digest, 0) + 1
        return True

    def close_session(self, secret: ClientSecret) -> None:
        digest = _digest(secret.value)
        if (left := self._open.get(digest, 0) - 1) > 0:
            self._open[digest] = left
        else:
            self._open.pop(digest, None)

    def __len__(self) -> int:
        return len(self._by_digest)

    def issue(self, ttl_s: int, config: SessionConfig) -> ClientSecret:
        if len(self._by_digest) >= self.max_active:
            self._forget_expired()
        if len(self._by_digest) >= self.max_active:
            soonest = min(s.deadline for s in self._by_digest.values())
            raise ClientSecretsFull(max(1, math.ceil(soonest - self.clock())))
        value = PREFIX + secrets.token_urlsafe(32)
        secret = ClientSecret(
            value,
            expires_at=int(self.wall_clock()) + ttl_s,
            deadline=self.clock() + ttl_s,
            config=config,
        )
        self._by_digest[_digest(value)] = secret
        return secret

    def get(self, value: str) -> ClientSecret | None:
        """The secret if it was issued here and has not expired."""
        digest = _digest(value)
        secret = self._by_digest.get(digest)
        if secret is not None and secret.deadline <= self.clock():
            del self._by_digest[digest]
            return None
        return secret

    def _forget_expired(self) -> None:
        now = self.clock()
        for digest in [d for d, s in self._by_digest.items() if s.deadline <= now]:
            del self._by_digest[digest]


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()
