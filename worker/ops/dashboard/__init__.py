"""``image-worker dashboard``: the operators' live web page (contract v2).

``server`` is the aiohttp application (the page, its JSON, the replay and cancel actions and
their checks); ``command`` runs it for the CLI and the demo; ``static/`` holds the page itself
(HTML, one vanilla script, one stylesheet), shipped inside the wheel and read with
``importlib.resources``. Its one database read is ``image_worker_dashboard``
(``worker.store.operations``).
"""
