"""examples/web served as any static server would serve it, plus the ``config.js`` it reads
(the Supabase URL and anon key of the stack it talks to). Used by ``scripts/example_app.py``,
the browser tests and the Broadcast benchmark."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from devstack.postgres import REPO_ROOT

EXAMPLE_WEB = REPO_ROOT / "examples" / "web"


def example_site(supabase_url: str, anon_key: str, root: Path = EXAMPLE_WEB) -> web.Application:
    config = {"supabaseUrl": supabase_url, "anonKey": anon_key}

    async def config_js(request: web.Request) -> web.Response:
        body = f"window.IMAGE_WORKER_CONFIG = {json.dumps(config)}\n"
        return web.Response(text=body, content_type="application/javascript")

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(root / "index.html")

    app = web.Application()
    app.router.add_get("/config.js", config_js)
    app.router.add_get("/", index)
    app.router.add_static("/", root, follow_symlinks=False)
    return app
