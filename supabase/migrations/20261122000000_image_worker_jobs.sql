-- image-worker: the jobs table and the functions the worker calls through /rest/v1/rpc.
--
-- Runs unchanged on a Supabase project (SQL editor or `supabase db push`) and is idempotent:
-- running it twice changes nothing. Every state change the worker makes is one of the functions
-- below, so each is atomic and guarded:
--   claim      pending -> running, FOR UPDATE SKIP LOCKED, attempts counted at claim, new lease token
--   heartbeat  renews the lease (and reports progress) only while the caller holds the lease
--   complete_many / fail / retry / release   only while the caller holds the lease (the token is
--              a fence); complete_many takes every job that finished together in one round trip
--   rescue     expired leases -> pending again, or failed once JOB_MAX_ATTEMPTS claims are used
--   replay     operators push stuck or failed jobs back to pending (never a live lease unless forced)
--
-- The functions take the table name (the worker's JOBS_TABLE setting, default 'jobs'); a table
-- under another name must have the same columns as public.jobs below.

create table if not exists public.jobs (
  id uuid primary key default gen_random_uuid(),
  user_id uuid,
  prompt text not null,
  model text,
  aspect_ratio text not null default '1:1',
  status text not null default 'pending',
  progress smallint not null default 0,
  image_url text,
  thumbnail_url text,
  error_message text,
  attempts integer not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz,
  -- Worker bookkeeping (the app need not read these):
  run_after timestamptz not null default now(),  -- not claimable before this time
  worker_id text,                                -- WORKER_ID of the last worker to claim the job
  lease_token uuid,                              -- fencing token of the current claim
  lease_expires_at timestamptz,                  -- running jobs past this are recovered by rescue
  claim_trigger text,                            -- what woke the claim: realtime, catchup, poll, sweep
  replayed_at timestamptz,                       -- set by `image-worker replay`
  replay_reason text
);

-- Columns added after the first release go here as `add column if not exists`.
alter table public.jobs add column if not exists claim_trigger text;

do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'jobs_status_check') then
    alter table public.jobs add constraint jobs_status_check
      check (status in ('pending', 'running', 'complete', 'failed'));
  end if;
  if not exists (select 1 from pg_constraint where conname = 'jobs_progress_check') then
    alter table public.jobs add constraint jobs_progress_check check (progress between 0 and 100);
  end if;
end
$$;

-- The claim scans pending jobs oldest first; the partial index holds only pending rows, so it stays
-- small however many finished jobs the table keeps.
create index if not exists jobs_pending_idx on public.jobs (created_at, id) where status = 'pending';
-- Rescue looks for running jobs whose lease expired.
create index if not exists jobs_running_lease_idx on public.jobs (lease_expires_at)
  where status = 'running';
-- Apps list a user's jobs; RLS filters on user_id.
create index if not exists jobs_user_created_idx on public.jobs (user_id, created_at desc);
-- `image-worker status` and `replay --failed` look at recent failures.
create index if not exists jobs_failed_idx on public.jobs (completed_at desc) where status = 'failed';

create or replace function public.jobs_touch_updated_at() returns trigger
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  new.updated_at := now();
  return new;
end
$$;

create or replace trigger jobs_touch_updated_at
  before update on public.jobs
  for each row execute function public.jobs_touch_updated_at();

-- A signed-in user's insert is a request for work, nothing more: whatever they send for the
-- status, result or bookkeeping columns is replaced by the defaults.
create or replace function public.jobs_sanitize_user_insert() returns trigger
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  if current_user in ('anon', 'authenticated') then
    new.status := 'pending';
    new.progress := 0;
    new.image_url := null;
    new.thumbnail_url := null;
    new.error_message := null;
    new.attempts := 0;
    new.created_at := now();
    new.updated_at := now();
    new.started_at := null;
    new.completed_at := null;
    new.run_after := now();
    new.worker_id := null;
    new.lease_token := null;
    new.lease_expires_at := null;
    new.claim_trigger := null;
    new.replayed_at := null;
    new.replay_reason := null;
  end if;
  return new;
end
$$;

create or replace trigger jobs_sanitize_user_insert
  before insert on public.jobs
  for each row execute function public.jobs_sanitize_user_insert();

alter table public.jobs enable row level security;

drop policy if exists jobs_insert_own on public.jobs;
create policy jobs_insert_own on public.jobs
  for insert to authenticated
  with check (user_id = (select auth.uid()));

drop policy if exists jobs_select_own on public.jobs;
create policy jobs_select_own on public.jobs
  for select to authenticated
  using (user_id = (select auth.uid()));

-- No update or delete policy: only the service role (which bypasses RLS) changes jobs.
revoke update, delete, truncate on public.jobs from anon, authenticated;

-- Realtime wakes the worker on INSERT and on UPDATE back to pending.
do $$
begin
  if exists (select 1 from pg_publication where pubname = 'supabase_realtime')
     and not exists (
       select 1 from pg_publication_tables
       where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'jobs'
     ) then
    alter publication supabase_realtime add table public.jobs;
  end if;
end
$$;

-- claim: up to p_limit pending jobs, oldest first, for p_worker_id; returns the claimed rows.
create or replace function public.image_worker_claim(
  p_worker_id text,
  p_limit integer,
  p_lease_seconds double precision,
  p_trigger text default null,
  p_table text default 'jobs'
) returns setof jsonb
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  if p_limit is null or p_limit < 1 then
    return;
  end if;
  return query execute format($sql$
    with picked as (
      select id from public.%1$I
      where status = 'pending' and run_after <= now()
      order by created_at, id
      limit $1
      for update skip locked
    )
    update public.%1$I as j
    set status = 'running',
        progress = 10,
        attempts = j.attempts + 1,
        started_at = now(),
        completed_at = null,
        worker_id = $2,
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => $3),
        claim_trigger = $4
    from picked
    where j.id = picked.id
    returning to_jsonb(j.*)
  $sql$, p_table)
  using p_limit, p_worker_id, p_lease_seconds, p_trigger;
end
$$;

-- heartbeat: extend the lease (and optionally set progress). False when the lease is lost.
create or replace function public.image_worker_heartbeat(
  p_id uuid,
  p_lease_token uuid,
  p_lease_seconds double precision,
  p_progress integer default null,
  p_table text default 'jobs'
) returns boolean
language plpgsql
set search_path = pg_catalog, public
as $$
declare
  held boolean;
begin
  execute format($sql$
    update public.%1$I
    set lease_expires_at = now() + make_interval(secs => $3),
        progress = coalesce($4, progress)
    where id = $1 and lease_token = $2 and status = 'running'
    returning true
  $sql$, p_table)
  into held
  using p_id, p_lease_token, p_lease_seconds, p_progress;
  return coalesce(held, false);
end
$$;

-- complete_many: the results of jobs that finished together, in one round trip, each written only
-- by its lease holder. p_jobs: [{"id", "lease_token", "image_url", "thumbnail_url"}, ...]. For
-- each job, true when it is complete under that lease (by this call, or by an earlier one whose
-- reply was lost, so a worker may retry safely), false when the lease is lost.
create or replace function public.image_worker_complete_many(
  p_jobs jsonb,
  p_table text default 'jobs'
) returns table (id uuid, completed boolean)
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  return query execute format($sql$
    with input as (
      select (e ->> 'id')::uuid as id, (e ->> 'lease_token')::uuid as lease_token,
             e ->> 'image_url' as image_url, e ->> 'thumbnail_url' as thumbnail_url
      from jsonb_array_elements($1) as e
    ),
    done as (
      update public.%1$I as j
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
           or exists (select 1 from public.%1$I as j
                      where j.id = i.id and j.lease_token = i.lease_token
                        and j.status = 'complete')
    from input as i
  $sql$, p_table)
  using p_jobs;
end
$$;

-- fail: the job ends failed with one clear sentence; only by the lease holder; idempotent.
create or replace function public.image_worker_fail(
  p_id uuid,
  p_lease_token uuid,
  p_error_message text,
  p_table text default 'jobs'
) returns boolean
language plpgsql
set search_path = pg_catalog, public
as $$
declare
  done boolean;
begin
  execute format($sql$
    update public.%1$I
    set status = 'failed', error_message = left($3, 1000), completed_at = now(),
        lease_expires_at = null
    where id = $1 and lease_token = $2 and status = 'running'
    returning true
  $sql$, p_table)
  into done
  using p_id, p_lease_token, p_error_message;
  if done then
    return true;
  end if;
  execute format(
    'select exists (select 1 from public.%1$I where id = $1 and lease_token = $2 and status = %2$L)',
    p_table, 'failed')
  into done
  using p_id, p_lease_token;
  return done;
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
  p_max_attempts integer,
  p_table text default 'jobs'
) returns text
language plpgsql
set search_path = pg_catalog, public
as $$
declare
  new_status text;
begin
  execute format($sql$
    update public.%1$I
    set status = case when attempts >= $5 then 'failed' else 'pending' end,
        error_message = left(case when attempts >= $5
          then format('gave up after %%s attempts: %%s', attempts, $3)
          else $3 end, 1000),
        completed_at = case when attempts >= $5 then now() end,
        run_after = now() + make_interval(secs => $4),
        lease_expires_at = null
    where id = $1 and lease_token = $2 and status = 'running'
    returning status
  $sql$, p_table)
  into new_status
  using p_id, p_lease_token, p_error_message, p_delay_seconds, p_max_attempts;
  return new_status;
end
$$;

-- release: give a job back untouched (graceful shutdown). The claim is refunded: the worker
-- chose to stop, the job did nothing wrong.
create or replace function public.image_worker_release(
  p_id uuid,
  p_lease_token uuid,
  p_table text default 'jobs'
) returns boolean
language plpgsql
set search_path = pg_catalog, public
as $$
declare
  done boolean;
begin
  execute format($sql$
    update public.%1$I
    set status = 'pending', progress = 0, attempts = greatest(attempts - 1, 0),
        run_after = now(), lease_token = null, lease_expires_at = null, started_at = null
    where id = $1 and lease_token = $2 and status = 'running'
    returning true
  $sql$, p_table)
  into done
  using p_id, p_lease_token;
  return coalesce(done, false);
end
$$;

-- rescue: running jobs whose lease expired go back to pending, or fail once they used
-- p_max_attempts claims. Safe to run on every replica at once: rows are locked and re-checked.
create or replace function public.image_worker_rescue(
  p_max_attempts integer,
  p_limit integer default 500,
  p_table text default 'jobs'
) returns table (id uuid, status text, attempts integer, worker_id text)
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  return query execute format($sql$
    with expired as (
      select j.id from public.%1$I as j
      where j.status = 'running' and j.lease_expires_at < now()
      order by j.lease_expires_at
      limit $2
      for update skip locked
    )
    update public.%1$I as j
    set status = case when j.attempts >= $1 then 'failed' else 'pending' end,
        error_message = case when j.attempts >= $1
          then format('failed after %%s attempts: the worker running it stopped responding '
                      'each time (lease expired; last worker %%s)', j.attempts, j.worker_id)
          else j.error_message end,
        completed_at = case when j.attempts >= $1 then now() end,
        progress = case when j.attempts >= $1 then j.progress else 0 end,
        run_after = now(),
        lease_token = case when j.attempts >= $1 then j.lease_token end,
        lease_expires_at = null
    from expired
    where j.id = expired.id and j.status = 'running' and j.lease_expires_at < now()
    returning j.id, j.status, j.attempts, j.worker_id
  $sql$, p_table)
  using p_max_attempts, p_limit;
end
$$;

revoke all on function public.image_worker_claim(text, integer, double precision, text, text) from public, anon, authenticated;
revoke all on function public.image_worker_heartbeat(uuid, uuid, double precision, integer, text) from public, anon, authenticated;
revoke all on function public.image_worker_complete_many(jsonb, text) from public, anon, authenticated;
revoke all on function public.image_worker_fail(uuid, uuid, text, text) from public, anon, authenticated;
revoke all on function public.image_worker_retry(uuid, uuid, text, double precision, integer, text) from public, anon, authenticated;
revoke all on function public.image_worker_release(uuid, uuid, text) from public, anon, authenticated;
revoke all on function public.image_worker_rescue(integer, integer, text) from public, anon, authenticated;
grant execute on function public.image_worker_claim(text, integer, double precision, text, text) to service_role;
grant execute on function public.image_worker_heartbeat(uuid, uuid, double precision, integer, text) to service_role;
grant execute on function public.image_worker_complete_many(jsonb, text) to service_role;
grant execute on function public.image_worker_fail(uuid, uuid, text, text) to service_role;
grant execute on function public.image_worker_retry(uuid, uuid, text, double precision, integer, text) to service_role;
grant execute on function public.image_worker_release(uuid, uuid, text) to service_role;
grant execute on function public.image_worker_rescue(integer, integer, text) to service_role;
