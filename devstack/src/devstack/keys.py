"""API keys for the devstack: HS256 JWTs like a Supabase project's anon and service-role keys."""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field

import jwt


@dataclass
class Keys:
    """The project's JWT secret and the keys derived from it."""

    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def __post_init__(self) -> None:
        self.anon_key = self.sign({"role": "anon", "iss": "supabase"}, ttl=10 * 365 * 86400)
        self.service_role_key = self.sign(
            {"role": "service_role", "iss": "supabase"}, ttl=10 * 365 * 86400
        )

    def sign(self, claims: dict, ttl: int = 3600) -> str:
        now = int(time.time())
        return jwt.encode({"iat": now, "exp": now + ttl, **claims}, self.jwt_secret, "HS256")

    def user_token(self, user_id: uuid.UUID | str, ttl: int = 3600) -> str:
        """A signed-in user's access token (role ``authenticated``)."""
        return self.sign(
            {"sub": str(user_id), "role": "authenticated", "aud": "authenticated"}, ttl=ttl
        )

    def verify(self, token: str | None) -> dict | None:
        """The token's claims, or None when it is missing, forged or expired."""
        if not token:
            return None
        try:
            claims = jwt.decode(
                token, self.jwt_secret, algorithms=["HS256"], options={"verify_aud": False}
            )
        except jwt.PyJWTError:
            return None
        if claims.get("role") not in ("anon", "authenticated", "service_role"):
            return None
        return claims
