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
# Cancelling (supabase/migrations/20261127000100_image_worker_tenancy.sql)
MARK_CANCELLED = "image_worker_mark_cancelled"
CANCEL_REQUESTED = "image_worker_cancel_requested"
SET_GENERATION_REF = "image_worker_set_generation_ref"
GENERATION_REF_IN_USE = "image_worker_generation_ref_in_use"

REPLAY_CANDIDATES = "image_worker_replay_candidates"
REPLAY = "image_worker_replay"
STATUS = "image_worker_status"
# The operators' web page, `image-worker dashboard` (20261127000500_image_worker_dashboard.sql).
DASHBOARD = "image_worker_dashboard"
# Called by app users (their own jobs) and by `image-worker cancel` (any job).
CANCEL_JOB = "cancel_job"

# The migration that defines the operator functions, named in the operator's error message.
OPERATIONS_MIGRATION = "supabase/migrations/20261122000100_image_worker_operations.sql"
# The migration that defines cancel_job and replay's p_cancelled.
TENANCY_MIGRATION = "supabase/migrations/20261127000100_image_worker_tenancy.sql"
# The migration that defines image_worker_dashboard.
DASHBOARD_MIGRATION = "supabase/migrations/20261127000500_image_worker_dashboard.sql"
