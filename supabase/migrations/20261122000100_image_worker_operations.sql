-- image-worker: the functions behind the operator commands `image-worker replay` and `status`.
--
-- Runs unchanged on a Supabase project (SQL editor or `supabase db push`) after
-- 20261122000000_image_worker_jobs.sql, and is idempotent. Like the worker's own functions they
-- take the table name (JOBS_TABLE, default 'jobs') and are callable by the service role only.
--
--   image_worker_replay_candidates   lists what `replay` would change (read only)
--   image_worker_replay              requeues a batch in ONE guarded statement
--   image_worker_status              the queue overview as one JSON document
--
-- Which jobs replay may touch is decided by image_worker_replay_eligible below, used both to list
-- and, again, inside the UPDATE itself: a job that completed (or was claimed) between the listing
-- and the UPDATE is left alone.

-- Eligibility of one job for replay:
--   running, lease expired (or no lease)  always: its worker is gone, the job is stuck
--   running, lease still live             only with p_force, and only when the job was named
--                                         (p_named) or started more than p_stuck_seconds ago
--   failed                                with p_failed, or when the job was named
--   pending, complete                     never
create or replace function public.image_worker_replay_eligible(
  p_status text,
  p_started_at timestamptz,
  p_lease_expires_at timestamptz,
  p_named boolean,
  p_stuck_seconds double precision,
  p_failed boolean,
  p_force boolean
) returns boolean
language sql
stable
set search_path = pg_catalog, public
as $$
  select case p_status
    when 'running' then
      p_lease_expires_at is null
      or p_lease_expires_at < now()
      or (coalesce(p_force, false) and (
            p_named
            or (p_stuck_seconds is not null
                and p_started_at < now() - make_interval(secs => p_stuck_seconds))))
    when 'failed' then coalesce(p_failed, false) or p_named
    else false
  end
$$;

-- Candidates: every job replay would change with p_force, flagged with whether it needs the
-- force (a live lease), so the command can show what it skips and why. With p_ids only those
-- jobs are considered (and each is returned, even when not replayable, so the command can say
-- why); without, running jobs with an expired lease or started more than p_stuck_seconds ago,
-- and failed jobs when p_failed.
create or replace function public.image_worker_replay_candidates(
  p_ids uuid[] default null,
  p_stuck_seconds double precision default null,
  p_failed boolean default false,
  p_limit integer default 10000,
  p_table text default 'jobs'
) returns table (
  id uuid,
  status text,
  attempts integer,
  worker_id text,
  error_message text,
  age_seconds double precision,
  lease_seconds_left double precision,
  lease_live boolean,
  eligible boolean
)
language plpgsql
stable
set search_path = pg_catalog, public
as $$
begin
  return query execute format($sql$
    select j.id, j.status, j.attempts, j.worker_id, j.error_message,
           -- Age: how long the job has been in its current state (running since / failed at).
           extract(epoch from now() - coalesce(
             case when j.status = 'failed' then j.completed_at end, j.started_at, j.created_at
           ))::double precision,
           extract(epoch from j.lease_expires_at - now())::double precision,
           coalesce(j.status = 'running' and j.lease_expires_at >= now(), false),
           public.image_worker_replay_eligible(
             j.status, j.started_at, j.lease_expires_at, $1 is not null, $2, $3, true)
    from public.%1$I as j
    where case when $1 is not null then j.id = any($1)
          else (j.status = 'running' and (
                  j.lease_expires_at is null or j.lease_expires_at < now()
                  or ($2 is not null and j.started_at < now() - make_interval(secs => $2))))
               or (j.status = 'failed' and $3)
          end
    order by j.created_at, j.id
    limit $4
  $sql$, p_table)
  using p_ids, p_stuck_seconds, p_failed, p_limit;
end
$$;

-- Replay: reset the given jobs to pending, as if newly inserted, in one statement. Each row is
-- locked and its eligibility re-checked on its latest version (a job that completed or was
-- claimed meanwhile is skipped), so it is safe against running workers. Returns the jobs it
-- changed, with the values they had before. Workers pick them up at once: the Realtime UPDATE
-- subscription to status=pending fires for each.
create or replace function public.image_worker_replay(
  p_ids uuid[],
  p_named boolean default false,
  p_stuck_seconds double precision default null,
  p_failed boolean default false,
  p_force boolean default false,
  p_reason text default null,
  p_table text default 'jobs'
) returns table (
  id uuid,
  old_status text,
  attempts integer,
  worker_id text,
  age_seconds double precision
)
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  return query execute format($sql$
    with old as (
      select j.id, j.status, j.attempts, j.worker_id,
             extract(epoch from now() - coalesce(
               case when j.status = 'failed' then j.completed_at end, j.started_at, j.created_at
             ))::double precision as age_seconds
      from public.%1$I as j
      where j.id = any($1)
        and public.image_worker_replay_eligible(
              j.status, j.started_at, j.lease_expires_at, $2, $3, $4, $5)
      order by j.id
      for update
    )
    update public.%1$I as j
    set status = 'pending',
        attempts = 0,
        progress = 0,
        error_message = null,
        started_at = null,
        completed_at = null,
        run_after = now(),
        worker_id = null,
        lease_token = null,  -- fences off a forced job's old worker: it can no longer write
        lease_expires_at = null,
        claim_trigger = null,
        replayed_at = now(),
        replay_reason = left($6, 500)
    from old
    where j.id = old.id
      and public.image_worker_replay_eligible(
            j.status, j.started_at, j.lease_expires_at, $2, $3, $4, $5)
    returning j.id, old.status, old.attempts, old.worker_id, old.age_seconds
  $sql$, p_table)
  using p_ids, p_named, p_stuck_seconds, p_failed, p_force, p_reason;
end
$$;

-- Status: counts by status, the oldest pending job, running jobs with their lease, stuck jobs
-- (running with an expired lease) and the latest failures, as one JSON document. Ages are
-- computed here, on the database's clock, so a skewed operator laptop does not distort them.
create or replace function public.image_worker_status(
  p_list_limit integer default 20,
  p_table text default 'jobs'
) returns jsonb
language plpgsql
stable
set search_path = pg_catalog, public
as $$
declare
  result jsonb;
begin
  execute format($sql$
    select jsonb_build_object(
      'counts', (
        select jsonb_build_object(
          'pending', count(*) filter (where status = 'pending'),
          'running', count(*) filter (where status = 'running'),
          'complete', count(*) filter (where status = 'complete'),
          'failed', count(*) filter (where status = 'failed'),
          'total', count(*))
        from public.%1$I),
      'pending_delayed', (
        select count(*) from public.%1$I where status = 'pending' and run_after > now()),
      -- How long the oldest claimable job has waited since it became claimable (inserted,
      -- replayed, rescued, or its retry delay ended): the queue's lag, for alerts.
      'oldest_pending_age_seconds', (
        select extract(epoch from now() - min(run_after))::double precision
        from public.%1$I where status = 'pending' and run_after <= now()),
      'stuck_count', (
        select count(*) from public.%1$I
        where status = 'running' and (lease_expires_at is null or lease_expires_at < now())),
      'running', coalesce((
        select jsonb_agg(r order by r.running_seconds desc) from (
          select id, worker_id, progress, attempts,
                 extract(epoch from now() - started_at)::double precision as running_seconds,
                 extract(epoch from lease_expires_at - now())::double precision
                   as lease_seconds_left
          from public.%1$I where status = 'running'
          order by started_at limit $1) as r), '[]'::jsonb),
      'stuck', coalesce((
        select jsonb_agg(r order by r.lease_expired_seconds desc nulls first) from (
          select id, worker_id, progress, attempts,
                 extract(epoch from now() - started_at)::double precision as running_seconds,
                 extract(epoch from now() - lease_expires_at)::double precision
                   as lease_expired_seconds
          from public.%1$I
          where status = 'running' and (lease_expires_at is null or lease_expires_at < now())
          order by lease_expires_at nulls first limit $1) as r), '[]'::jsonb),
      'recent_failures', coalesce((
        select jsonb_agg(r order by r.failed_seconds_ago) from (
          select id, attempts, error_message,
                 extract(epoch from now() - completed_at)::double precision as failed_seconds_ago
          from public.%1$I where status = 'failed'
          order by completed_at desc nulls last limit $1) as r), '[]'::jsonb)
    )
  $sql$, p_table)
  into result
  using p_list_limit;
  return result;
end
$$;

revoke all on function public.image_worker_replay_eligible(text, timestamptz, timestamptz, boolean, double precision, boolean, boolean) from public, anon, authenticated;
revoke all on function public.image_worker_replay_candidates(uuid[], double precision, boolean, integer, text) from public, anon, authenticated;
revoke all on function public.image_worker_replay(uuid[], boolean, double precision, boolean, boolean, text, text) from public, anon, authenticated;
revoke all on function public.image_worker_status(integer, text) from public, anon, authenticated;
grant execute on function public.image_worker_replay_eligible(text, timestamptz, timestamptz, boolean, double precision, boolean, boolean) to service_role;
grant execute on function public.image_worker_replay_candidates(uuid[], double precision, boolean, integer, text) to service_role;
grant execute on function public.image_worker_replay(uuid[], boolean, double precision, boolean, boolean, text, text) to service_role;
grant execute on function public.image_worker_status(integer, text) to service_role;
