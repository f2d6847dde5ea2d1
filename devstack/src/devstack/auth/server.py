"""The ``/auth/v1`` routes: users, sessions and the tokens GoTrue hands out (see the package)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from devstack.keys import Keys
from devstack.rest.errors import gateway_error

ACCESS_TOKEN_TTL = 3600  # GoTrue's default JWT expiry (GOTRUE_JWT_EXP)
_PBKDF2_ROUNDS = 10_000  # a dev stand-in: enough to keep passwords out of memory dumps


def _now_iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), UTC).isoformat()


class AuthError(Exception):
    """A GoTrue error answer: ``{"code": status, "error_code": …, "msg": …}``."""

    def __init__(self, status: int, error_code: str, msg: str) -> None:
        super().__init__(msg)
        self.status, self.error_code, self.msg = status, error_code, msg

    def response(self) -> web.Response:
        body = {"code": self.status, "error_code": self.error_code, "msg": self.msg}
        return web.json_response(body, status=self.status)


@dataclass
class User:
    id: str
    email: str | None
    is_anonymous: bool
    salt: bytes = b""
    password_hash: bytes = b""
    user_metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    last_sign_in_at: float | None = None

    @property
    def provider(self) -> str:
        return "anonymous" if self.is_anonymous else "email"

    def check_password(self, password: str) -> bool:
        if not self.password_hash:
            return False
        return hmac.compare_digest(_hash(password, self.salt), self.password_hash)

    def as_json(self) -> dict[str, Any]:
        """``models.User`` as GoTrue serializes it."""
        created = _now_iso(self.created_at)
        body: dict[str, Any] = {
            "id": self.id,
            "aud": "authenticated",
            "role": "authenticated",
            "email": self.email or "",
            "phone": "",
            "app_metadata": {"provider": self.provider, "providers": [self.provider]},
            "user_metadata": dict(self.user_metadata),
            "identities": [],
            "created_at": created,
            "updated_at": _now_iso(self.last_sign_in_at or self.created_at),
            "is_anonymous": self.is_anonymous,
        }
        if self.email:
            body["email_confirmed_at"] = created
            body["confirmed_at"] = created
        if self.last_sign_in_at is not None:
            body["last_sign_in_at"] = _now_iso(self.last_sign_in_at)
        return body


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _PBKDF2_ROUNDS)


@dataclass
class _Session:
    id: str
    user_id: str
    refresh_token: str
    method: str  # how it signed in: the JWT's amr


class AuthServer:
    """The Auth service of one devstack project."""

    def __init__(self, keys: Keys, *, anonymous_sign_ins: bool = True) -> None:
        self.keys = keys
        self.anonymous_sign_ins = anonymous_sign_ins
        self.users: dict[str, User] = {}
        self._by_email: dict[str, str] = {}
        self._sessions: dict[str, _Session] = {}
        self._refresh: dict[str, str] = {}  # live refresh token -> session id
        self.sign_ins = 0

    # -- seeding --

    def create_user(
        self,
        email: str,
        password: str,
        *,
        user_id: str | uuid.UUID | None = None,
        user_metadata: dict[str, Any] | None = None,
    ) -> User:
        """A confirmed email/password user (what the dashboard's "Add user" makes)."""
        email = email.strip().lower()
        if not email or "@" not in email:
            raise AuthError(
                400, "validation_failed", "Unable to validate email address: invalid format"
            )
        if len(password) < 6:
            raise AuthError(422, "weak_password", "Password should be at least 6 characters.")
        if email in self._by_email:
            raise AuthError(422, "user_already_exists", "User already registered")
        salt = secrets.token_bytes(16)
        user = User(
            id=str(user_id or uuid.uuid4()),
            email=email,
            is_anonymous=False,
            salt=salt,
            password_hash=_hash(password, salt),
            user_metadata=dict(user_metadata or {}),
        )
        self.users[user.id] = user
        self._by_email[email] = user.id
        return user

    # -- routes --

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/auth/v1/signup", self._guarded(self._signup)),
            web.post("/auth/v1/token", self._guarded(self._token)),
            web.get("/auth/v1/user", self._guarded(self._user)),
            web.post("/auth/v1/logout", self._guarded(self._logout)),
            web.get("/auth/v1/settings", self._guarded(self._settings)),
        ]

    def admin_routes(self) -> list[web.RouteDef]:
        async def create(request: web.Request) -> web.Response:
            try:
                body = await request.json()
                user = self.create_user(str(body["email"]), str(body["password"]))
            except AuthError as exc:
                return exc.response()
            except (KeyError, TypeError, ValueError) as exc:
                return web.json_response(
                    {"error": f"expected email and password: {exc}"}, status=400
                )
            return web.json_response(user.as_json(), status=201)

        async def listing(request: web.Request) -> web.Response:
            return web.json_response({"users": [u.as_json() for u in self.users.values()]})

        return [web.post("/admin/auth/users", create), web.get("/admin/auth/users", listing)]

    def _guarded(self, handler: Any) -> Any:
        """The gateway's apikey check, then GoTrue's own error answers."""

        async def handle(request: web.Request) -> web.StreamResponse:
            apikey = request.headers.get("apikey") or request.query.get("apikey")
            if not apikey:
                return gateway_error(
                    "No API key found in request",
                    "No `apikey` request header or url param was found.",
                )
            if self.keys.verify(apikey) is None:
                return gateway_error(
                    "Invalid API key",
                    "Double check your Supabase `anon` or `service_role` API key.",
                )
            try:
                return await handler(request)
            except AuthError as exc:
                return exc.response()

        return handle

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise AuthError(400, "bad_json", "Could not parse request body as JSON") from exc
        return body if isinstance(body, dict) else {}

    async def _signup(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        email, password = body.get("email"), body.get("password")
        if not email and not body.get("phone"):
            # GoTrue's router: no email and no phone is an anonymous sign-in.
            if not self.anonymous_sign_ins:
                raise AuthError(
                    422, "anonymous_provider_disabled", "Anonymous sign-ins are disabled"
                )
            user = User(id=str(uuid.uuid4()), email=None, is_anonymous=True)
            user.user_metadata = dict(body.get("data") or {})
            self.users[user.id] = user
            return self._session_response(request, user, "anonymous")
        if body.get("phone"):
            raise AuthError(400, "phone_provider_disabled", "Phone signups are disabled")
        if not isinstance(password, str) or not password:
            raise AuthError(400, "validation_failed", "Signup requires a valid password")
        user = self.create_user(str(email), password, user_metadata=body.get("data"))
        return self._session_response(request, user, "password")

    async def _token(self, request: web.Request) -> web.Response:
        grant = request.query.get("grant_type")
        body = await self._body(request)
        if grant == "password":
            email = str(body.get("email") or "").strip().lower()
            user_id = self._by_email.get(email)
            user = self.users.get(user_id) if user_id else None
            if user is None or not user.check_password(str(body.get("password") or "")):
                raise AuthError(400, "invalid_credentials", "Invalid login credentials")
            return self._session_response(request, user, "password")
        if grant == "refresh_token":
            token = str(body.get("refresh_token") or "")
            session_id = self._refresh.pop(token, None)
            session = self._sessions.get(session_id) if session_id else None
            if session is None:
                raise AuthError(
                    400,
                    "refresh_token_not_found",
                    "Invalid Refresh Token: Refresh Token Not Found",
                )
            user = self.users[session.user_id]
            return self._session_response(request, user, session.method, session)
        raise AuthError(400, "invalid_credentials", "unsupported_grant_type")

    async def _user(self, request: web.Request) -> web.Response:
        user, _claims = self._bearer(request)
        return web.json_response(user.as_json())

    async def _logout(self, request: web.Request) -> web.Response:
        user, claims = self._bearer(request)
        scope = request.query.get("scope") or "global"
        if scope not in ("global", "local", "others"):
            raise AuthError(400, "validation_failed", f'Unsupported logout scope "{scope}"')
        current = claims.get("session_id")
        for session in list(self._sessions.values()):
            if session.user_id != user.id:
                continue
            mine = session.id == current
            if scope == "global" or (scope == "local" and mine) or (scope == "others" and not mine):
                self._sessions.pop(session.id, None)
                self._refresh.pop(session.refresh_token, None)
        return web.Response(status=204)

    async def _settings(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "external": {
                    "anonymous_users": self.anonymous_sign_ins,
                    "email": True,
                    "phone": False,
                },
                "disable_signup": False,
                "mailer_autoconfirm": True,
                "phone_autoconfirm": False,
                "sms_provider": "",
                "saml_enabled": False,
            }
        )

    # -- tokens --

    def _bearer(self, request: web.Request) -> tuple[User, dict[str, Any]]:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "no_authorization", "This endpoint requires a valid Bearer token")
        claims = self.keys.verify(token.strip())
        if claims is None:
            raise AuthError(403, "bad_jwt", "invalid JWT: unable to parse or verify signature")
        user = self.users.get(str(claims.get("sub") or ""))
        if user is None:
            raise AuthError(403, "user_not_found", "User from sub claim in JWT does not exist")
        session_id = claims.get("session_id")
        if session_id is not None and session_id not in self._sessions:
            raise AuthError(
                403, "session_not_found", "Session from session_id claim in JWT does not exist"
            )
        return user, claims

    def _session_response(
        self, request: web.Request, user: User, method: str, session: _Session | None = None
    ) -> web.Response:
        issuer = f"{request.url.origin()}/auth/v1"
        now = time.time()
        if session is None:
            session = _Session(str(uuid.uuid4()), user.id, "", method)
            self._sessions[session.id] = session
            user.last_sign_in_at = now
            self.sign_ins += 1
        session.refresh_token = secrets.token_urlsafe(9)
        self._refresh[session.refresh_token] = session.id
        issued = int(now)
        claims = {
            "iss": issuer,
            "iat": issued,
            "exp": issued + ACCESS_TOKEN_TTL,
            "aud": "authenticated",
            "sub": user.id,
            "email": user.email or "",
            "phone": "",
            "app_metadata": {"provider": user.provider, "providers": [user.provider]},
            "user_metadata": dict(user.user_metadata),
            "role": "authenticated",
            "aal": "aal1",
            "amr": [{"method": method, "timestamp": int(now)}],
            "session_id": session.id,
            "is_anonymous": user.is_anonymous,
        }
        body = {
            "access_token": self.keys.sign(claims),
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_TTL,
            "expires_at": claims["exp"],
            "refresh_token": session.refresh_token,
            "user": user.as_json(),
        }
        return web.json_response(body)
