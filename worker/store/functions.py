"""The SQL functions the worker calls, by name: the one list of what the migrations must provide.

Each is defined in ``supabase/migrations/`` and reached through PostgREST's ``/rest/v1/rpc``.
"""

CLAIM = "image_worker_claim"
HEARTBEAT = "image_worker_heartbeat"
COMPLETE_MANY = "image_worker_complete_many"
FAIL = "image_worker_fail"
RETRY = "image_worker_retry"
RELEASE = "image_worker_release"
RESCUE = "image_worker_rescue"

REPLAY_CANDIDATES = "image_worker_replay_candidates"
REPLAY = "image_worker_replay"
STATUS = "image_worker_status"

# The migration that defines the operator functions, named in the operator's error message.
OPERATIONS_MIGRATION = "supabase/migrations/20261122000100_image_worker_operations.sql"
