"""Supabase Auth (GoTrue) stand-in: the sign-ins an app's front end makes, nothing more.

Served under ``/auth/v1`` on the stack's main port, like the real gateway, to the real clients
(supabase-js's auth-js, supabase-py's supabase_auth):

* ``POST /signup``: with ``email`` and ``password``, a new user, confirmed at once (the devstack
  sends no mail); with neither (auth-js's ``signInAnonymously()`` posts ``{data,
  gotrue_meta_security}``), an anonymous user, unless anonymous sign-ins are off (422
  ``anonymous_provider_disabled``);
* ``POST /token?grant_type=password`` (``signInWithPassword``) and
  ``?grant_type=refresh_token`` (the client's auto-refresh; refresh tokens rotate, a used one is
  refused);
* ``GET /user`` (``getUser``), ``POST /logout?scope=global|local|others`` (``signOut``: 204);
* ``GET /settings``.

Answers are shaped as GoTrue's (supabase/auth ``internal/tokens/service.go``
``AccessTokenResponse``: ``access_token``, ``token_type``, ``expires_in``, ``expires_at``,
``refresh_token``, ``user``; ``internal/models/user.go`` for the user; errors
``{"code", "error_code", "msg"}`` from ``internal/api/apierrors``). Access tokens are HS256 JWTs
signed with the stack's JWT secret, ``role: authenticated``, ``sub`` the user's id, with
GoTrue's claims (``aud``, ``email``, ``session_id``, ``is_anonymous``, ``amr``, ``aal``, …), so
the REST and Realtime stand-ins accept them as they accept ``keys.user_token``.

Users live in memory, for the stack's lifetime. Seed one with :meth:`AuthServer.create_user`
(or ``POST /admin/auth/users {"email", "password"}``). Not modelled: email/phone confirmation
flows, OTP, OAuth, MFA, PKCE, rate limits, ``auth.users`` in the database.
"""

from devstack.auth.server import ACCESS_TOKEN_TTL, AuthError, AuthServer, User

__all__ = ["ACCESS_TOKEN_TTL", "AuthError", "AuthServer", "User"]
