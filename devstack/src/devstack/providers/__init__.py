"""Stand-ins for the hosted image providers the worker can use besides the generic HTTP kind.

Each is a small aiohttp server on its own port that answers like the provider's documented API,
checks the provider's auth header, counts the generations it was asked for (``creations``,
``creations_for(prompt)``) and keeps every call (``calls``), with fault switches per request
(``[gen:…]`` tokens in the prompt) and global ones (``inject``, ``default_faults``, and
``/admin/<provider>/…`` on the devstack's main port):

- :mod:`~devstack.providers.replicate` — Replicate's predictions API (``GENERATOR_KIND=replicate``)
- :mod:`~devstack.providers.openai` — OpenAI's Images API (``GENERATOR_KIND=openai``)
- :mod:`~devstack.providers.fal` — fal's queue API (``GENERATOR_KIND=fal``)
- :mod:`~devstack.providers.faults` — the ``[gen:…]`` fault tokens they all understand
- :mod:`~devstack.providers.common` — what else they share: the base server, the call log, files

``DevStack`` starts all three (``stack.replicate``, ``stack.openai``, ``stack.fal``) and
``stack.provider_env(kind)`` gives the worker's environment for one of them.
"""

from devstack.providers.common import CallRecord
from devstack.providers.fal import FalStandIn
from devstack.providers.faults import FaultError, Faults
from devstack.providers.openai import OpenAIStandIn
from devstack.providers.replicate import ReplicateStandIn

__all__ = [
    "CallRecord",
    "FalStandIn",
    "FaultError",
    "Faults",
    "OpenAIStandIn",
    "ReplicateStandIn",
]
