"""PostgREST stand-in: the part of PostgREST's API that supabase-py 2.34.1 uses, on real Postgres.

Postgres renders the JSON (``json_agg``), so values look exactly as PostgREST renders them.

Supported: ``GET HEAD POST PATCH DELETE /rest/v1/<table>`` with the filters ``eq neq gt gte lt lte
like ilike match imatch in is isdistinct cs cd ov sl sr nxl nxr adj fts plfts phfts wfts``, the
``not.`` prefix, ``(any)``/``(all)`` modifiers, ``or=``/``and=`` trees, JSON paths (``col->a->>b``),
``select`` (columns, ``alias:col``, ``col::type``), ``order``, ``limit``, ``offset``, ``columns``,
``on_conflict``, ``Prefer`` (``return``, ``count``, ``resolution``, ``handling=strict`` with
``max-affected``), the single-object ``Accept`` header; ``POST/GET/HEAD /rest/v1/rpc/<fn>``;
``db-max-rows`` (``RestApi.max_rows``, off by default as in PostgREST; hosted Supabase: 1000).
Not supported: resource embedding (rejected with PGRST200), ``missing=default``, ``PUT``, CSV,
``explain``, aggregates, the ``request.headers``/``request.method`` settings.

Where things are:

* :mod:`~devstack.rest.handler`: the HTTP routes, API key and JWT, the transaction;
* :mod:`~devstack.rest.faults`: the fault switches (``/admin/rest/...``);
* :mod:`~devstack.rest.grammar`: reading PostgREST's query parameters, headers and body;
* :mod:`~devstack.rest.catalog`: the schema cache every identifier is checked against;
* :mod:`~devstack.rest.sql`: filters, select lists and order as SQL;
* :mod:`~devstack.rest.statements`: a whole request as one statement, and its answer;
* :mod:`~devstack.rest.errors`: errors as PostgREST and Supabase's gateway answer them.
"""

from devstack.rest.catalog import Catalog, Function, Relation
from devstack.rest.errors import JSON_CONTENT_TYPE, PgrstError
from devstack.rest.grammar import SINGLE_OBJECT
from devstack.rest.handler import RestApi

__all__ = [
    "JSON_CONTENT_TYPE",
    "SINGLE_OBJECT",
    "Catalog",
    "Function",
    "PgrstError",
    "Relation",
    "RestApi",
]
