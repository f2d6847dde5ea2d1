"""Generator stand-in: a local HTTP server that answers like an image-generation endpoint.

It runs on its own port (like the real remote service) and speaks the contract's protocol:
``POST /generate`` with JSON ``{"job_id", "prompt", "model", "aspect_ratio", "user_id", "width",
"height"}`` and ``Authorization: Bearer <token>`` (401 without it). Every request is recorded per
job id in ``calls`` (and at ``GET /admin/generator/calls`` on the devstack's main port).

How it answers is chosen by a token in the prompt: ``[gen:NAME]`` or ``[gen:NAME:ARG:ARG…]``,
e.g. ``"a red fox [gen:cold404:2]"``. Without one, ``default_behaviour`` applies ("png";
``POST /admin/generator/default {"behaviour": "status:503"}`` changes it). Counts ("the first N
calls") are per job id, so a retried job sees the failure N times, then success. An unknown
behaviour is answered 400 ``stand-in: unknown behaviour``.

Images (seeded by the prompt: blurry colour fields, ~15 KB per megapixel as PNG):

| behaviour | answer |
| --- | --- |
| ``png`` (default), ``jpeg``, ``webp``, ``gif`` | 200 with the image, the requested width × height |
| ``tiny`` | 200 with a 64 × 64 PNG whatever the size asked (load tests, benchmarks) |
| ``noise[:BYTES]`` | 200 with a PNG of random noise of about BYTES (default 1 MiB; memory soaks) |
| ``base64`` | 200 JSON ``{"image_base64": "<png>"}`` |
| ``b64_json`` | 200 JSON ``{"b64_json": "<png>"}`` |
| ``datauri`` | 200 JSON ``{"b64_json": "data:image/png;base64,<png>"}`` |
| ``openai`` | 200 JSON ``{"data": [{"b64_json": "<png>"}]}`` (OpenAI Images shape) |
| ``image_url[:ASSET]`` | 200 JSON ``{"image_url": "<stand-in>/images/<id>.png"}``, serving ASSET |
| ``url[:ASSET]`` | the same with the key ``url`` |
| ``cloudinary_link[:URL]`` | 200 JSON ``{"cloudinary_link": URL}`` (default a res.cloudinary.com URL) |
| ``redirect303[:N[:S]]`` | Modal's long-request protocol: POST → 303 to ``/generate?__modal_function_call_id=fc-…``; each GET there waits S s (default 0) and answers 303 again, N times in all (default 2), then 200 PNG, and the same PNG at once to any later GET (the result URL "can be reloaded"). An unknown call id → 404 ``modal-http: invalid function call``; a POST to the result URL → 400 ``modal-http: bad redirect method`` |

Failures:

| behaviour | answer |
| --- | --- |
| ``cold404[:N]`` | 404 ``modal-http: app for invoked web endpoint is stopped`` the first N calls (default 1), then PNG |
| ``stopped`` | that 404 on every call |
| ``status:CODE[:N]`` | HTTP CODE with a realistic body the first N calls, then PNG; without N, always. 400 JSON detail, 401 proxy-auth text, 404 ``modal-http: invalid function call``, 429 with ``Retry-After``, 500 ``modal-http: internal error…``, 502 HTML… |
| ``slow:S`` | waits S seconds, then PNG |
| ``hang`` | never answers (until the client leaves or the stand-in stops) |
| ``dribble[:S]`` | 200 ``image/png`` with Content-Length, a small valid PNG sent one byte every S s (default 1) |
| ``html_as_png`` | 200 ``image/png`` whose body is an HTML page |
| ``html`` | 200 ``text/html`` page |
| ``json_no_image`` | 200 JSON without any image field |
| ``bad_json`` | 200 ``application/json`` that does not parse |
| ``bad_base64`` | 200 JSON ``{"image_base64": "…"}`` that is not base64 |
| ``base64_not_image`` | 200 JSON ``{"image_base64": …}``: valid base64 of an HTML page |
| ``oversize[:BYTES]`` | 200 ``image/png``, BYTES long (default 25 MiB), with Content-Length |
| ``oversize_chunked[:BYTES]`` | the same, chunked, without Content-Length |
| ``oversize_base64[:BYTES]`` | 200 JSON ``image_base64`` of BYTES bytes |
| ``private_url`` | 200 JSON ``{"image_url": "https://10.0.0.5/x.png"}`` (never to be fetched, even with ALLOW_INSECURE_DOWNLOADS) |
| ``metadata_url`` | 200 JSON ``{"image_url": "http://169.254.169.254/latest/meta-data/"}`` |
| ``redirect_private`` | 200 JSON ``image_url`` on the stand-in that redirects to ``https://10.0.0.5/x.png`` |
| ``echo_auth`` | 400 whose body echoes the Authorization header (an endpoint leaking the token) |

ASSET (what ``/images/<id>`` serves, for ``image_url``/``url`` and ``asset_url()``): ``png``,
``jpeg``, ``webp``, ``gif``, ``html_as_png``, ``html``, ``oversize[:BYTES]``,
``oversize_chunked[:BYTES]``, ``dribble[:S]``, ``slow:S``, ``hang``, ``status:CODE[:N]`` (counted
per asset), ``redirect_to:URL`` (302 to URL), ``redirect:N`` (302 to itself N times, then PNG).
``/images/*`` needs no token (image hosts don't) and is recorded under the job that made it.

``latency`` (seconds, default 0; ``POST /admin/generator/latency {"seconds": 0.5}``), spread by
``latency_jitter`` (± seconds, uniform), is added to
every authorised ``POST /generate`` to simulate generation time in benchmarks.

Where things are: :mod:`~devstack.generator.server` (the HTTP server, the call records and the
admin routes), :mod:`~devstack.generator.behaviours` (reading ``[gen:…]`` tokens),
:mod:`~devstack.generator.answers` (what each behaviour answers), :mod:`~devstack.generator.images`
(the images themselves).
"""

from devstack.generator.answers import DEFAULT_OVERSIZE, METADATA_URL, PRIVATE_URL, STOPPED_BODY
from devstack.generator.behaviours import Behaviour, BehaviourError
from devstack.generator.images import noise_png, render_image
from devstack.generator.server import CallRecord, GeneratorStandIn

__all__ = [
    "DEFAULT_OVERSIZE",
    "METADATA_URL",
    "PRIVATE_URL",
    "STOPPED_BODY",
    "Behaviour",
    "BehaviourError",
    "CallRecord",
    "GeneratorStandIn",
    "noise_png",
    "render_image",
]
