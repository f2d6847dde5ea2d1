-- image-worker: the job functions as static SQL on public.jobs (contract v2: JOBS_TABLE retired).
--
-- Runs unchanged on a Supabase project (SQL editor or `supabase db push`) after
-- 20261122000000_image_worker_jobs.sql and 20261122000100_image_worker_operations.sql, and is
-- idempotent: running it twice changes nothing.
--
-- Why: the functions of those two migrations took the table name (`p_table text default 'jobs'`)
-- and built every statement with format(... %1$I ...) + EXECUTE, although the table, its RLS,
-- triggers and Realtime publication only ever exist as public.jobs. Dynamic SQL is parsed and
-- planned again on every call and is hard to read and review. Here each function is the same
-- statement, written out on public.jobs:
--   * the worker's functions (claim, heartbeat, complete_many, fail, retry, release, rescue) are
--     plpgsql with static statements: plpgsql keeps a statement's plan for the session, and
--     PostgREST reuses its sessions, on every PostgreSQL version Supabase runs (a `language sql`
--     function is planned again on each call before PostgreSQL 18);
--   * the operator functions (replay_candidates, replay, status), called once per command, are
--     plain `language sql`.
-- Names, parameters (minus p_table), results, locking, guards and messages are unchanged.
--
-- The old p_table overloads are dropped first, so PostgREST never sees two candidates for one
-- call (it would answer PGRST203). A worker that still sends p_table then gets PGRST202: roll the
-- worker out first (a worker without p_table works against the old functions too, through
-- p_table's default), then apply this migration.
--
-- In the plpgsql functions every column is qualified by its table's alias: the names of a
-- `returns table (...)` result (id, status, attempts, ...) are plpgsql variables too, and an
-- unqualified column of the same name would be ambiguous.

drop function if exists public.image_worker_claim(text, integer, double precision, text, text);
drop function if exists public.image_worker_heartbeat(uuid, uuid, double precision, integer, text);
drop function if exists public.image_worker_complete_many(jsonb, text);
drop function if exists public.image_worker_fail(uuid, uuid, text, text);
drop function if exists public.image_worker_retry(uuid, uuid, text, double precision, integer, text);
drop function if exists public.image_worker_release(uuid, uuid, text);
drop function if exists public.image_worker_rescue(integer, integer, text);
drop function if exists public.image_worker_replay_candidates(uuid[], double precision, boolean, integer, text);
drop function if exists public.image_worker_replay(uuid[], boolean, double precision, boolean, boolean, text, text);
drop function if exists public.image_worker_status(integer, text);

-- claim: up to p_limit pending jobs, oldest first, for p_worker_id; returns the claimed rows.
-- SKIP LOCKED: replicas claiming at once each get other jobs, and none waits for another.
create or replace function public.image_worker_claim(
  p_worker_id text,
  p_limit integer,
  p_lease_seconds double precision,
  p_trigger text default null
) returns setof jsonb
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  -- LIMIT NULL would mean no limit: a missing or non-positive limit claims nothing.
  if p_limit is null or p_limit < 1 then
    return;
  end if;
  return query
    with picked as (
      select p.id from public.jobs as p
      where p.status = 'pending' and p.run_after <= now()
      order by p.created_at, p.id
      limit p_limit
      for update skip locked
    )
    update public.jobs as j
    set status = 'running',
        progress = 10,
        attempts = j.attempts + 1,
        started_at = now(),
        completed_at = null,
        worker_id = p_worker_id,
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => p_lease_seconds),
        claim_trigger = p_trigger
    from picked
    where j.id = picked.id
    returning to_jsonb(j.*);
end
$$;

-- heartbeat: extend the lease (and optionally set progress). False when the lease is lost.
create or replace function public.image_worker_heartbeat(
  p_id uuid,
  p_lease_token uuid,
  p_lease_seconds double precision,
  p_progress integer default null
) returns boolean
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  update public.jobs as j
  set lease_expires_at = now() + make_interval(secs => p_lease_seconds),
      progress = coalesce(p_progress, j.progress)
  where j.id = p_id and j.lease_token = p_lease_token and j.status = 'running';
  return found;
end
$$;

-- complete_many: the results of jobs that finished together, in one round trip, each written only
-- by its lease holder. p_jobs: [{"id", "lease_token", "image_url", "thumbnail_url"}, ...]. For
-- each job, true when it is complete under that lease (by this call, or by an earlier one whose
-- reply was lost, so a worker may retry safely), false when the lease is lost.
create or replace function public.image_worker_complete_many(
  p_jobs jsonb
) returns table (id uuid, completed boolean)
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  return query
    with input as (
      select (e ->> 'id')::uuid as id, (e ->> 'lease_token')::uuid as lease_token,
             e ->> 'image_url' as image_url, e ->> 'thumbnail_url' as thumbnail_url
      from jsonb_array_elements(p_jobs) as e
    ),
    done as (
      update public.jobs as j
      set status = 'complete', progress = 100, image_url = i.image_url,
          thumbnail_url = i.thumbnail_url, error_message = null, completed_at = now(),
          lease_expires_at = null
      from input as i
      where j.id = i.id and j.lease_token = i.lease_token and j.status = 'running'
      returning j.id
    )
    -- The outer query sees the rows as they were before the update: a job counts as
    -- completed when this call completed it, or an earlier call did under the same lease.
    select i.id,
           exists (select 1 from done as d where d.id = i.id)
           or exists (select 1 from public.jobs as j
                      where j.id = i.id and j.lease_token = i.lease_token
                        and j.status = 'complete')
    from input as i;
end
$$;

-- fail: the job ends failed with one clear sentence; only by the lease holder; idempotent (a
-- second call under the same lease, after a lost reply, answers true again).
create or replace function public.image_worker_fail(
  p_id uuid,
  p_lease_token uuid,
  p_error_message text
) returns boolean
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  update public.jobs as j
  set status = 'failed', error_message = left(p_error_message, 1000), completed_at = now(),
      lease_expires_at = null
  where j.id = p_id and j.lease_token = p_lease_token and j.status = 'running';
  if found then
    return true;
  end if;
  return exists (
    select 1 from public.jobs as j
    where j.id = p_id and j.lease_token = p_lease_token and j.status = 'failed'
  );
end
$$;

-- retry: the attempt broke unexpectedly; try again after p_delay_seconds, unless the job has
-- used p_max_attempts claims, in which case it fails for good. Returns the new status, or null
-- when the caller no longer holds the lease.
create or replace function public.image_worker_retry(
  p_id uuid,
  p_lease_token uuid,
  p_error_message text,
  p_delay_seconds double precision,
  p_max_attempts integer
) returns text
language plpgsql
set search_path = pg_catalog, public
as $$
declare
  new_status text;
begin
  update public.jobs as j
  set status = case when j.attempts >= p_max_attempts then 'failed' else 'pending' end,
      error_message = left(case when j.attempts >= p_max_attempts
        then format('gave up after %s attempts: %s', j.attempts, p_error_message)
        else p_error_message end, 1000),
      completed_at = case when j.attempts >= p_max_attempts then now() end,
      run_after = now() + make_interval(secs => p_delay_seconds),
      lease_expires_at = null
  where j.id = p_id and j.lease_token = p_lease_token and j.status = 'running'
  returning j.status into new_status;
  return new_status;
end
$$;

-- release: give a job back untouched (graceful shutdown). The claim is refunded: the worker
-- chose to stop, the job did nothing wrong.
create or replace function public.image_worker_release(
  p_id uuid,
  p_lease_token uuid
) returns boolean
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  update public.jobs as j
  set status = 'pending', progress = 0, attempts = greatest(j.attempts - 1, 0),
      run_after = now(), lease_token = null, lease_expires_at = null, started_at = null
  where j.id = p_id and j.lease_token = p_lease_token and j.status = 'running';
  return found;
end
$$;

-- rescue: running jobs whose lease expired go back to pending, or fail once they used
-- p_max_attempts claims. Safe to run on every replica at once: rows are locked and re-checked.
create or replace function public.image_worker_rescue(
  p_max_attempts integer,
  p_limit integer default 500
) returns table (id uuid, status text, attempts integer, worker_id text)
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  return query
    with expired as (
      select x.id from public.jobs as x
      where x.status = 'running' and x.lease_expires_at < now()
      order by x.lease_expires_at
      limit p_limit
      for update skip locked
    )
    update public.jobs as j
    set status = case when j.attempts >= p_max_attempts then 'failed' else 'pending' end,
        error_message = case when j.attempts >= p_max_attempts
          then format('failed after %s attempts: the worker running it stopped responding '
                      'each time (lease expired; last worker %s)', j.attempts, j.worker_id)
          else j.error_message end,
        completed_at = case when j.attempts >= p_max_attempts then now() end,
        progress = case when j.attempts >= p_max_attempts then j.progress else 0 end,
        run_after = now(),
        lease_token = case when j.attempts >= p_max_attempts then j.lease_token end,
        lease_expires_at = null
    from expired
    -- Re-checked on the locked row: a job renewed or finished since the scan is left alone.
    where j.id = expired.id and j.status = 'running' and j.lease_expires_at < now()
    returning j.id, j.status, j.attempts, j.worker_id;
end
$$;

-- Eligibility of one job for replay (already static; restated unchanged so this file holds every
-- function the commands call):
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
-- and failed jobs when p_failed. (A NULL p_limit means no limit, as before.)
create or replace function public.image_worker_replay_candidates(
  p_ids uuid[] default null,
  p_stuck_seconds double precision default null,
  p_failed boolean default false,
  p_limit integer default 10000
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
language sql
stable
set search_path = pg_catalog, public
as $$
  select j.id, j.status, j.attempts, j.worker_id, j.error_message,
         -- Age: how long the job has been in its current state (running since / failed at).
         extract(epoch from now() - coalesce(
           case when j.status = 'failed' then j.completed_at end, j.started_at, j.created_at
         ))::double precision,
         extract(epoch from j.lease_expires_at - now())::double precision,
         coalesce(j.status = 'running' and j.lease_expires_at >= now(), false),
         public.image_worker_replay_eligible(
           j.status, j.started_at, j.lease_expires_at, p_ids is not null, p_stuck_seconds,
           p_failed, true)
  from public.jobs as j
  where case when p_ids is not null then j.id = any(p_ids)
        else (j.status = 'running' and (
                j.lease_expires_at is null or j.lease_expires_at < now()
                or (p_stuck_seconds is not null
                    and j.started_at < now() - make_interval(secs => p_stuck_seconds))))
             or (j.status = 'failed' and p_failed)
        end
  order by j.created_at, j.id
  limit p_limit
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
  p_reason text default null
) returns table (
  id uuid,
  old_status text,
  attempts integer,
  worker_id text,
  age_seconds double precision
)
language sql
set search_path = pg_catalog, public
as $$
  with old as (
    select j.id, j.status, j.attempts, j.worker_id,
           extract(epoch from now() - coalesce(
             case when j.status = 'failed' then j.completed_at end, j.started_at, j.created_at
           ))::double precision as age_seconds
    from public.jobs as j
    where j.id = any(p_ids)
      and public.image_worker_replay_eligible(
            j.status, j.started_at, j.lease_expires_at, p_named, p_stuck_seconds, p_failed,
            p_force)
    order by j.id
    for update
  )
  update public.jobs as j
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
      replay_reason = left(p_reason, 500)
  from old
  where j.id = old.id
    and public.image_worker_replay_eligible(
          j.status, j.started_at, j.lease_expires_at, p_named, p_stuck_seconds, p_failed,
          p_force)
  returning j.id, old.status, old.attempts, old.worker_id, old.age_seconds
$$;

-- Status: counts by status, the oldest pending job, running jobs with their lease, stuck jobs
-- (running with an expired lease) and the latest failures, as one JSON document. Ages are
-- computed here, on the database's clock, so a skewed operator laptop does not distort them.
-- Same keys as before; `image-worker status` adds "table" ("jobs") itself.
create or replace function public.image_worker_status(
  p_list_limit integer default 20
) returns jsonb
language sql
stable
set search_path = pg_catalog, public
as $$
  select jsonb_build_object(
    'counts', (
      select jsonb_build_object(
        'pending', count(*) filter (where status = 'pending'),
        'running', count(*) filter (where status = 'running'),
        'complete', count(*) filter (where status = 'complete'),
        'failed', count(*) filter (where status = 'failed'),
        'total', count(*))
      from public.jobs),
    'pending_delayed', (
      select count(*) from public.jobs where status = 'pending' and run_after > now()),
    -- How long the oldest claimable job has waited since it became claimable (inserted,
    -- replayed, rescued, or its retry delay ended): the queue's lag, for alerts.
    'oldest_pending_age_seconds', (
      select extract(epoch from now() - min(run_after))::double precision
      from public.jobs where status = 'pending' and run_after <= now()),
    'stuck_count', (
      select count(*) from public.jobs
      where status = 'running' and (lease_expires_at is null or lease_expires_at < now())),
    'running', coalesce((
      select jsonb_agg(r order by r.running_seconds desc) from (
        select id, worker_id, progress, attempts,
               extract(epoch from now() - started_at)::double precision as running_seconds,
               extract(epoch from lease_expires_at - now())::double precision
                 as lease_seconds_left
        from public.jobs where status = 'running'
        order by started_at limit p_list_limit) as r), '[]'::jsonb),
    'stuck', coalesce((
      select jsonb_agg(r order by r.lease_expired_seconds desc nulls first) from (
        select id, worker_id, progress, attempts,
               extract(epoch from now() - started_at)::double precision as running_seconds,
               extract(epoch from now() - lease_expires_at)::double precision
                 as lease_expired_seconds
        from public.jobs
        where status = 'running' and (lease_expires_at is null or lease_expires_at < now())
        order by lease_expires_at nulls first limit p_list_limit) as r), '[]'::jsonb),
    'recent_failures', coalesce((
      select jsonb_agg(r order by r.failed_seconds_ago) from (
        select id, attempts, error_message,
               extract(epoch from now() - completed_at)::double precision as failed_seconds_ago
        from public.jobs where status = 'failed'
        order by completed_at desc nulls last limit p_list_limit) as r), '[]'::jsonb)
  )
$$;

-- Callable by the service role only. Supabase's default privileges grant EXECUTE on every new
-- function in public to anon and authenticated, and PostgreSQL grants it to PUBLIC: revoke both.
revoke all on function public.image_worker_claim(text, integer, double precision, text) from public, anon, authenticated;
revoke all on function public.image_worker_heartbeat(uuid, uuid, double precision, integer) from public, anon, authenticated;
revoke all on function public.image_worker_complete_many(jsonb) from public, anon, authenticated;
revoke all on function public.image_worker_fail(uuid, uuid, text) from public, anon, authenticated;
revoke all on function public.image_worker_retry(uuid, uuid, text, double precision, integer) from public, anon, authenticated;
revoke all on function public.image_worker_release(uuid, uuid) from public, anon, authenticated;
revoke all on function public.image_worker_rescue(integer, integer) from public, anon, authenticated;
revoke all on function public.image_worker_replay_eligible(text, timestamptz, timestamptz, boolean, double precision, boolean, boolean) from public, anon, authenticated;
revoke all on function public.image_worker_replay_candidates(uuid[], double precision, boolean, integer) from public, anon, authenticated;
revoke all on function public.image_worker_replay(uuid[], boolean, double precision, boolean, boolean, text) from public, anon, authenticated;
revoke all on function public.image_worker_status(integer) from public, anon, authenticated;
grant execute on function public.image_worker_claim(text, integer, double precision, text) to service_role;
grant execute on function public.image_worker_heartbeat(uuid, uuid, double precision, integer) to service_role;
grant execute on function public.image_worker_complete_many(jsonb) to service_role;
grant execute on function public.image_worker_fail(uuid, uuid, text) to service_role;
grant execute on function public.image_worker_retry(uuid, uuid, text, double precision, integer) to service_role;
grant execute on function public.image_worker_release(uuid, uuid) to service_role;
grant execute on function public.image_worker_rescue(integer, integer) to service_role;
grant execute on function public.image_worker_replay_eligible(text, timestamptz, timestamptz, boolean, double precision, boolean, boolean) to service_role;
grant execute on function public.image_worker_replay_candidates(uuid[], double precision, boolean, integer) to service_role;
grant execute on function public.image_worker_replay(uuid[], boolean, double precision, boolean, boolean, text) to service_role;
grant execute on function public.image_worker_status(integer) to service_role;

-- PostgREST caches the functions it can call; have it reload now rather than route a call to a
-- dropped overload. (Supabase also does this on DDL through its event trigger; harmless twice.)
notify pgrst, 'reload schema';
