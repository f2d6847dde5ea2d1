"""What the Replicate API accepts and answers: the models' inputs, the headers, the error bodies.

Replicate checks a prediction's ``input`` against the model version's schema before it creates
anything and answers 422 "Input validation failed" listing each bad field (bodies observed in
the wild, e.g. ``{"detail": "- input.aspect_ratio: aspect_ratio must be one of the following:
\\"1:1\\", …\\n", "status": 422, "title": "Input validation failed", "invalid_fields":
[{"type": "enum", "field": "input.aspect_ratio", "description": "aspect_ratio must be one of the
following: …"}]}``). The schemas below are the models' own ``predict.py`` inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from devstack.providers.common import retry_after_headers

PREFER_RE = re.compile(r"^\s*wait(?:\s*=\s*(\d+))?\s*$")
DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")

# replicate/cog-flux predict.py, ASPECT_RATIOS (megapixels "1"; "0.25" halves both sides).
FLUX_ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "21:9": (1536, 640),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:5": (896, 1088),
    "5:4": (1088, 896),
    "3:4": (896, 1152),
    "4:3": (1152, 896),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
}
# Replicate's model page for black-forest-labs/flux-1.1-pro (API schema): these ratios plus
# "custom" (then width/height, 256-1440, multiples of 32). The pixel sizes are the flux table's.
PRO_ASPECT_RATIOS = ["custom", "1:1", "16:9", "3:2", "2:3", "4:5", "5:4", "9:16", "3:4", "4:3"]

# Replicate's own NSFW texts: cog-flux predict.py (postprocess) and cog-sdxl predict.py.
FLUX_NSFW = (
    "All generated images contained NSFW content. Try running it again with a different prompt."
)
SDXL_NSFW = "NSFW content detected. Try running it again, or try a different prompt."


@dataclass(frozen=True)
class Field:
    kind: str  # str | int | number | bool | enum
    default: Any = None
    choices: tuple[str, ...] = ()
    ge: float | None = None
    le: float | None = None
    required: bool = False


@dataclass(frozen=True)
class Model:
    owner: str
    name: str
    inputs: dict[str, Field]
    output: str = "list"  # list of URLs (cog ``-> List[Path]``) or one URL string
    official: bool = True  # runnable by owner/name without a version id
    nsfw_text: str = FLUX_NSFW
    versions: tuple[str, ...] = field(default=())

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}"


_FLUX_INPUTS = {
    # replicate/cog-flux predict.py, class Inputs.
    "prompt": Field("str", required=True),
    "aspect_ratio": Field("enum", "1:1", tuple(FLUX_ASPECT_RATIOS)),
    "num_outputs": Field("int", 1, ge=1, le=4),
    "seed": Field("int"),
    "output_format": Field("enum", "webp", ("webp", "jpg", "png")),
    "output_quality": Field("int", 80, ge=0, le=100),
    "disable_safety_checker": Field("bool", False),
    "go_fast": Field("bool", True),
    "megapixels": Field("enum", "1", ("1", "0.25")),
}
_SDXL_INPUTS = {
    # replicate/cog-sdxl predict.py, Predictor.predict.
    "prompt": Field("str", "An astronaut riding a rainbow unicorn"),
    "negative_prompt": Field("str", ""),
    "width": Field("int", 1024),
    "height": Field("int", 1024),
    "num_outputs": Field("int", 1, ge=1, le=4),
    "seed": Field("int"),
    "disable_safety_checker": Field("bool", False),
}
_PRO_INPUTS = {
    "prompt": Field("str", required=True),
    "aspect_ratio": Field("enum", "1:1", tuple(PRO_ASPECT_RATIOS)),
    "width": Field("int", ge=256, le=1440),
    "height": Field("int", ge=256, le=1440),
    "output_format": Field("enum", "webp", ("webp", "jpg", "png")),
    "output_quality": Field("int", 80, ge=0, le=100),
    "safety_tolerance": Field("int", 2, ge=1, le=6),
    "seed": Field("int"),
}

MODELS: dict[str, Model] = {
    m.ref: m
    for m in (
        Model("black-forest-labs", "flux-schnell", _FLUX_INPUTS),
        Model("black-forest-labs", "flux-dev", _FLUX_INPUTS),
        Model("black-forest-labs", "flux-1.1-pro", _PRO_INPUTS, output="string"),
        Model(
            "stability-ai",
            "sdxl",
            _SDXL_INPUTS,
            official=False,
            nsfw_text=SDXL_NSFW,
            # Versions seen in replicate/replicate-python tests/cassettes.
            versions=(
                "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b",
                "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc",
            ),
        ),
    )
}


def generic_model(ref: str) -> Model:
    """A model the stand-in has no schema for: any input, ``prompt`` read if present."""
    owner, _, name = ref.partition("/")
    return Model(owner, name, {}, official=True)


def validate(model: Model, payload: dict[str, Any]) -> list[dict[str, str]]:
    """Replicate's ``invalid_fields`` for ``payload`` against ``model`` (empty when valid).

    Fields the schema does not declare are let through (cog would drop or refuse them when the
    prediction runs, not at creation).
    """
    problems: list[dict[str, str]] = []
    for name, spec in model.inputs.items():
        value = payload.get(name)
        where = f"input.{name}"
        if value is None:
            if spec.required:
                problems.append(
                    {"type": "required", "field": "input", "description": f"{name} is required"}
                )
            continue
        if spec.kind == "enum":
            if value not in spec.choices:
                listed = ", ".join(f'"{c}"' for c in spec.choices)
                problems.append(
                    {
                        "type": "enum",
                        "field": where,
                        "description": f"{name} must be one of the following: {listed}",
                    }
                )
            continue
        expected = {"str": str, "int": int, "number": (int, float), "bool": bool}[spec.kind]
        if not isinstance(value, expected) or (spec.kind == "int" and isinstance(value, bool)):
            words = {"str": "string", "int": "integer", "number": "number", "bool": "boolean"}
            problems.append(
                {
                    "type": "invalid_type",
                    "field": where,
                    "description": f"Invalid type. Expected: {words[spec.kind]}, given: "
                    f"{type(value).__name__}",
                }
            )
            continue
        if spec.ge is not None and value < spec.ge:
            problems.append(
                {
                    "type": "number_gte",
                    "field": where,
                    "description": f"Must be greater than or equal to {spec.ge:g}",
                }
            )
        if spec.le is not None and value > spec.le:
            problems.append(
                {
                    "type": "number_lte",
                    "field": where,
                    "description": f"Must be less than or equal to {spec.le:g}",
                }
            )
    return problems


def validation_body(problems: list[dict[str, str]]) -> dict[str, Any]:
    lines = "".join(
        f"- {p['field']}: {p['description']}\n" if p["field"] else f"- {p['description']}\n"
        for p in problems
    )
    return {
        "detail": lines,
        "status": 422,
        "title": "Input validation failed",
        "invalid_fields": problems,
    }


def output_plan(model: Model, payload: dict[str, Any]) -> tuple[int, int, str, int]:
    """(width, height, file format, number of files) the prediction will produce."""
    fmt = payload.get("output_format") or ("png" if model.name == "sdxl" else "webp")
    count = payload.get("num_outputs") if isinstance(payload.get("num_outputs"), int) else 1
    width, height = payload.get("width"), payload.get("height")
    ratio = payload.get("aspect_ratio")
    if model.name == "flux-1.1-pro" and ratio != "custom":
        width, height = FLUX_ASPECT_RATIOS.get(ratio or "1:1", (1024, 1024))
    elif isinstance(ratio, str) and ratio in FLUX_ASPECT_RATIOS and model.name != "sdxl":
        width, height = FLUX_ASPECT_RATIOS[ratio]
        if payload.get("megapixels") == "0.25":  # cog-flux size_from_aspect_megapixels
            width, height = width // 2, height // 2
    if not isinstance(width, int) or not isinstance(height, int):
        width, height = 1024, 1024
    width, height = max(8, min(width, 4096)), max(8, min(height, 4096))
    return width, height, fmt, max(1, min(count, 4))


def prefer_wait(header: str | None) -> int | None:
    """Seconds to hold a creation for ``Prefer: wait[=N]`` (OpenAPI pattern ``^wait(=([1-9]|
    [1-9][0-9]|60))?$``; out-of-range values are clamped rather than refused)."""
    match = PREFER_RE.match(header or "")
    if match is None:
        return None
    return 60 if match.group(1) is None else max(1, min(int(match.group(1)), 60))


def cancel_after(header: str | None) -> float | None:
    """``Cancel-After``: "30s", "5m", "1h30m45s", or bare seconds; at least 5 s (OpenAPI spec)."""
    if not header:
        return None
    units = {"h": 3600, "m": 60, "s": 1, "": 1}
    total = sum(float(n) * units[u] for n, u in DURATION_RE.findall(header.strip()))
    return max(5.0, total) if total else None


def required(name: str) -> dict[str, str]:
    return {"type": "required", "field": "", "description": f"{name} is required"}


def problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    doc = {"title": title, "detail": detail, "status": status, **extra}
    return web.json_response(doc, status=status, content_type="application/problem+json")


def unauthenticated() -> web.Response:
    return problem(401, "Unauthenticated", "You did not pass a valid authentication token")


def not_found() -> web.Response:
    return problem(404, "Not found", "The requested prediction was not found.")


def throttled(seconds: float, style: str) -> web.Response:
    wait = max(1, round(seconds))
    detail = f"Request was throttled. Your rate limit resets in ~{wait}s."
    # The documented body is {"detail": …} alone; the current one adds status and retry_after.
    doc: dict[str, Any] = (
        {"detail": detail}
        if style == "body"
        else {"detail": detail, "status": 429, "retry_after": wait}
    )
    return web.json_response(
        doc,
        status=429,
        headers=retry_after_headers(seconds, style),
        content_type="application/problem+json",
    )


def server_error(code: int) -> web.Response:
    if code == 429:
        return throttled(1, "seconds")
    if code in (502, 503, 504):
        # Cloudflare sits in front of api.replicate.com (cassette headers: "Server: cloudflare").
        reason = {502: "Bad gateway", 503: "Service unavailable", 504: "Gateway time-out"}[code]
        page = f"<html><head><title>{code} {reason}</title></head><body><center><h1>{code} {reason}</h1></center><hr><center>cloudflare</center></body></html>"
        return web.Response(status=code, text=page, content_type="text/html")
    return problem(
        code, "Internal Server Error" if code == 500 else "Error", f"stand-in: HTTP {code}"
    )
