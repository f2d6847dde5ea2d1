-- image-worker: many users, one queue (contract v2). The jobs table as a safe API for signed-in
-- users, per-user limits and priorities, fair claims, cancellation, idempotency keys.
--
-- Runs unchanged on a Supabase project (SQL editor or `supabase db push`) after the earlier
-- migrations, and is idempotent: running it twice changes nothing.
--
-- What it adds:
--   * columns priority, idempotency_key, cancel_requested_at, generation_ref; status `cancelled`;
--   * a signed-in user's insert: only prompt, model, aspect_ratio, idempotency_key, user_id
--     (column privileges refuse the rest; the insert trigger replaces whatever slips through),
--     checked against the rules (prompt, aspect_ratio, model) and the user's limits
--     (max_queued, max_inserts_per_minute), each violation a 4xx naming the rule;
--   * public.image_worker_limits (per user, and a default row) and public.image_worker_models;
--   * fair claims: highest priority first, users take turns within a priority, oldest first
--     within a user, users at max_running passed over; cost bounded by the claim's size, not by
--     the backlog (see image_worker_claim below);
--   * cancel_job(job_id) for users (their own jobs) and the service role, and the worker's side
--     of it: heartbeat answers NULL when a cancel was requested, image_worker_cancel_requested
--     lists them, image_worker_mark_cancelled ends a job `cancelled` under its lease; a job whose
--     cancel was requested and that is retried, released or rescued ends `cancelled`;
--   * generation_ref: worker bookkeeping, cleared when a job completes, fails for good, is
--     cancelled or replayed (kept by a release and a rescue back to pending);
--   * replay of cancelled jobs only when asked (p_cancelled); status counts `cancelled`.
--
-- Errors, as PostgREST answers them (SQLSTATE -> HTTP):
--   23514 (check_violation) -> 400   a rule: prompt, aspect_ratio, model, idempotency_key
--   PT429 (PostgREST custom) -> 429  a limit: max_queued, max_inserts_per_minute
--   23505 (unique_violation) -> 409  a repeated idempotency_key
--   PT404 (PostgREST custom) -> 404  cancel_job: no such job
--   42501 (insufficient_privilege) -> 403 (401 for anon)  a column the user may not set
--
-- Functions whose signature changes are dropped first, so PostgREST never sees two candidates.

-- ---------------------------------------------------------------------------------------------
-- Columns and constraints

alter table public.jobs add column if not exists priority smallint not null default 0;
alter table public.jobs add column if not exists idempotency_key text;
alter table public.jobs add column if not exists cancel_requested_at timestamptz;
alter table public.jobs add column if not exists generation_ref jsonb;

do $$
begin
  if not exists (
    select 1 from pg_constraint
    where conname = 'jobs_status_check' and conrelid = 'public.jobs'::regclass
      and pg_get_constraintdef(oid) like '%cancelled%'
  ) then
    alter table public.jobs drop constraint if exists jobs_status_check;
    alter table public.jobs add constraint jobs_status_check
      check (status in ('pending', 'running', 'complete', 'failed', 'cancelled'));
  end if;
  -- A key longer than this would not fit the unique index (and is no key anyone types).
  if not exists (select 1 from pg_constraint where conname = 'jobs_idempotency_key_check') then
    alter table public.jobs add constraint jobs_idempotency_key_check
      check (char_length(idempotency_key) between 1 and 200);
  end if;
end
$$;

-- Idempotency keys are unique per user (NULL keys never collide). Not partial, so an app may
-- also use it as an upsert target: on_conflict=user_id,idempotency_key with ignore-duplicates.
create unique index if not exists jobs_user_idempotency_key_key
  on public.jobs (user_id, idempotency_key);

-- The fair claim takes a user's oldest pending job at a priority: one index descent per user.
-- Jobs without user_id are one user, keyed by the zero uuid (the same expression everywhere).
create index if not exists jobs_fair_pending_idx
  on public.jobs (priority, (coalesce(user_id, '00000000-0000-0000-0000-000000000000'::uuid)),
                  created_at, id)
  where status = 'pending';
-- max_running: a user's running jobs.
create index if not exists jobs_running_user_idx
  on public.jobs ((coalesce(user_id, '00000000-0000-0000-0000-000000000000'::uuid)))
  where status = 'running';
-- max_queued: a user's pending and running jobs.
create index if not exists jobs_user_active_idx
  on public.jobs (user_id) where status in ('pending', 'running');

-- ---------------------------------------------------------------------------------------------
-- Limits, models, and the queues of the fair claim

-- Per-user limits; user 00000000-0000-0000-0000-000000000000 is the default for every user
-- without a row of their own (a user's own row replaces it entirely). NULL = no limit; no rows =
-- no limits. Only the service role writes it; a signed-in user may read their own row and the
-- default one (an app can show "3 of 10 queued").
create table if not exists public.image_worker_limits (
  user_id uuid primary key,
  max_queued integer check (max_queued >= 0),
  max_inserts_per_minute integer check (max_inserts_per_minute >= 0),
  max_running integer check (max_running >= 0),
  priority smallint not null default 0
);

-- The models a job may name. While no row is enabled, any model is accepted.
create table if not exists public.image_worker_models (
  name text primary key,
  enabled boolean not null default true
);

-- One row per (priority, user) that has had pending jobs: whether it may have some now
-- (`active`), and when it was last served (`served_at`), which is the order users take turns
-- in. Kept by the triggers on jobs (a job becoming pending activates its queue) and by the
-- claim (which serves a queue, or retires it once it holds no pending job). Internal: no API
-- role reads it except the service role.
create table if not exists public.image_worker_queues (
  priority smallint not null,
  user_key uuid not null,
  active boolean not null default true,
  served_at timestamptz not null default '-infinity',
  primary key (priority, user_key)
);
-- The claim walks this: active queues, highest priority first, least recently served first.
create index if not exists image_worker_queues_turn_idx
  on public.image_worker_queues (priority desc, served_at, user_key) where active;

-- Queues of the jobs pending before this migration.
insert into public.image_worker_queues as q (priority, user_key)
select distinct j.priority, coalesce(j.user_id, '00000000-0000-0000-0000-000000000000'::uuid)
from public.jobs as j
where j.status = 'pending'
order by 1, 2
on conflict (priority, user_key) do update set active = true where not q.active;

alter table public.image_worker_limits enable row level security;
alter table public.image_worker_models enable row level security;
alter table public.image_worker_queues enable row level security;

drop policy if exists image_worker_limits_read_own on public.image_worker_limits;
create policy image_worker_limits_read_own on public.image_worker_limits
  for select to authenticated
  using (user_id = (select auth.uid()) or user_id = '00000000-0000-0000-0000-000000000000');

drop policy if exists image_worker_models_read_enabled on public.image_worker_models;
create policy image_worker_models_read_enabled on public.image_worker_models
  for select to authenticated
  using (enabled);

-- Supabase's default privileges grant everything on new tables to anon and authenticated.
revoke all on public.image_worker_limits from anon, authenticated;
revoke all on public.image_worker_models from anon, authenticated;
revoke all on public.image_worker_queues from anon, authenticated;
grant select on public.image_worker_limits to authenticated;
grant select on public.image_worker_models to authenticated;
grant all on public.image_worker_limits to service_role;
grant all on public.image_worker_models to service_role;
grant all on public.image_worker_queues to service_role;

-- ---------------------------------------------------------------------------------------------
-- What a signed-in user may do with public.jobs: read their own rows (every column, so
-- select('*') works), insert the request columns; nothing else. RLS (the earlier migration)
-- keeps them to their own rows. anon: nothing.

revoke all on public.jobs from anon, authenticated;
grant select on public.jobs to authenticated;
grant insert (prompt, model, aspect_ratio, idempotency_key, user_id) on public.jobs to authenticated;
grant all on public.jobs to service_role;

-- A signed-in user's insert: the database's columns are the database's, then the rules, then
-- the limits. Runs as the user (RLS applies to what it reads). The service role's inserts (and
-- any other role's) are trusted and pass untouched.
create or replace function public.jobs_sanitize_user_insert() returns trigger
language plpgsql
set search_path = pg_catalog, public
as $$
declare
  v_uid uuid;
  v_limits public.image_worker_limits;
  v_count integer;
begin
  if current_user not in ('anon', 'authenticated') then
    return new;
  end if;
  v_uid := auth.uid();

  -- Column privileges refuse these before we get here; this is the second line of defence.
  new.id := gen_random_uuid();
  new.user_id := coalesce(new.user_id, v_uid);
  new.status := 'pending';
  new.priority := 0;
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
  new.cancel_requested_at := null;
  new.generation_ref := null;

  -- The rules (23514 check_violation: HTTP 400 through PostgREST).
  if new.prompt is null
     or new.prompt ~ '^[[:space:]\u00a0\u1680\u180e\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]*$' then
    raise exception using errcode = '23514',
      message = 'prompt must not be blank',
      hint = 'Describe the image to generate.';
  end if;
  if char_length(new.prompt) > 4000 then
    raise exception using errcode = '23514',
      message = format('prompt must be at most 4000 characters (this one has %s)',
                       char_length(new.prompt)),
      hint = 'Shorten the prompt.';
  end if;
  if new.aspect_ratio is null
     or new.aspect_ratio <> all (array['1:1', '16:9', '9:16', '4:3', '3:4', '3:2', '2:3', '21:9', '9:21']) then
    raise exception using errcode = '23514',
      message = 'aspect_ratio must be one of 1:1, 16:9, 9:16, 4:3, 3:4, 3:2, 2:3, 21:9, 9:21',
      detail = format('aspect_ratio was %s', coalesce(quote_literal(left(new.aspect_ratio, 40)), 'null'));
  end if;
  if new.model is not null then
    if char_length(new.model) > 200 then
      raise exception using errcode = '23514',
        message = 'model must be at most 200 characters';
    end if;
    if exists (select 1 from public.image_worker_models as m where m.enabled)
       and not exists (
         select 1 from public.image_worker_models as m where m.name = new.model and m.enabled) then
      raise exception using errcode = '23514',
        message = 'model is not one of the enabled models',
        detail = format('model was %s', quote_literal(left(new.model, 80))),
        hint = 'The models on offer are the enabled rows of public.image_worker_models.';
    end if;
  end if;
  if new.idempotency_key is not null
     and (char_length(new.idempotency_key) > 200 or new.idempotency_key !~ '[^[:space:]]') then
    raise exception using errcode = '23514',
      message = 'idempotency_key must be 1 to 200 characters, not blank';
  end if;

  if new.user_id is distinct from v_uid then
    return new;  -- someone else's job: RLS refuses it (42501) right after this trigger
  end if;

  -- The limits: the user's own row, else the default row, else none.
  select l.* into v_limits from public.image_worker_limits as l where l.user_id = v_uid;
  if not found then
    select l.* into v_limits from public.image_worker_limits as l
    where l.user_id = '00000000-0000-0000-0000-000000000000';
    if not found then
      return new;
    end if;
  end if;
  new.priority := v_limits.priority;
  if v_limits.max_queued is null and v_limits.max_inserts_per_minute is null then
    return new;
  end if;
  -- A repeated idempotency key is answered 409 by the unique index, whatever the limits say.
  if new.idempotency_key is not null and exists (
       select 1 from public.jobs as j
       where j.user_id = v_uid and j.idempotency_key = new.idempotency_key) then
    return new;
  end if;

  -- One of the user's inserts at a time from here to its commit: concurrent inserts wait, then
  -- count each other (every statement below sees what committed before it started).
  perform pg_advisory_xact_lock(hashtext('image_worker_inserts'), hashtext(v_uid::text));
  if v_limits.max_queued is not null then
    select count(*) into v_count from (
      select 1 from public.jobs as j
      where j.user_id = v_uid and j.status in ('pending', 'running')
      limit v_limits.max_queued) as s;
    if v_count >= v_limits.max_queued then
      raise exception using errcode = 'PT429',
        message = format('max_queued reached: at most %s of your jobs may be pending or running at once',
                         v_limits.max_queued),
        hint = 'Wait for a job to finish, or cancel one.';
    end if;
  end if;
  if v_limits.max_inserts_per_minute is not null then
    select count(*) into v_count from (
      select 1 from public.jobs as j
      where j.user_id = v_uid and j.created_at > now() - interval '60 seconds'
      limit v_limits.max_inserts_per_minute) as s;
    if v_count >= v_limits.max_inserts_per_minute then
      raise exception using errcode = 'PT429',
        message = format('max_inserts_per_minute reached: at most %s jobs in any 60 seconds',
                         v_limits.max_inserts_per_minute),
        hint = 'Try again in a minute.';
    end if;
  end if;
  return new;
end
$$;

-- (The trigger jobs_sanitize_user_insert, BEFORE INSERT FOR EACH ROW, exists since the first
-- migration and now runs the function above.)

-- A job that becomes pending (inserted, retried, released, rescued, replayed) activates its
-- queue. Statement-level, so a bulk insert costs one upsert per (priority, user); the upserts
-- lock queue rows in key order, so two of them never deadlock. SECURITY DEFINER: users insert
-- jobs but have no access to the queues.
create or replace function public.jobs_activate_queues() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, public
as $$
begin
  insert into public.image_worker_queues as q (priority, user_key)
  select distinct n.priority,
         coalesce(n.user_id, '00000000-0000-0000-0000-000000000000'::uuid)
  from new_rows as n
  where n.status = 'pending'
  order by 1, 2
  on conflict (priority, user_key) do update set active = true where not q.active;
  return null;
end
$$;
revoke all on function public.jobs_activate_queues() from public, anon, authenticated;

create or replace trigger jobs_activate_queues_on_insert
  after insert on public.jobs
  referencing new table as new_rows
  for each statement execute function public.jobs_activate_queues();
create or replace trigger jobs_activate_queues_on_update
  after update on public.jobs
  referencing new table as new_rows
  for each statement execute function public.jobs_activate_queues();

-- ---------------------------------------------------------------------------------------------
-- The worker's functions

-- claim: up to p_limit jobs, fairly, for p_worker_id; returns the claimed rows, best first.
--
-- Order: highest priority first; within a priority users take turns (the queue served least
-- recently goes first; a new user's queue has never been served); within a user oldest first.
-- A user with max_running is passed over while that many of their jobs run under a live lease.
--
-- Cost: the claim walks image_worker_queues in turn order (a partial index of the active
-- queues) and takes each user's oldest job with one descent of jobs_fair_pending_idx, so it
-- reads about as many rows as it claims, however long the backlog. Within a priority, the
-- first round takes one job per queue until the claim is full or the priority's queues are
-- all visited; with fewer users than slots, more rounds share the rest among the queues served
-- so far; then the next priority down.
--
-- Replicas: jobs are locked FOR UPDATE SKIP LOCKED, so claims never wait for each other's jobs.
-- A transaction-scoped advisory lock per user says "a claim is serving this user": a
-- concurrent claim serves other users first and comes back to this one only when it has room
-- left (so several replicas fill up even from a single user's backlog). For a user with
-- max_running the lock is required: the claims of that user take turns, and the running count
-- is read after taking it, so it sees every claim committed before.
create or replace function public.image_worker_claim(
  p_worker_id text,
  p_limit integer,
  p_lease_seconds double precision,
  p_trigger text default null
) returns setof jsonb
language plpgsql
set search_path = pg_catalog, public
as $$
declare
  queues cursor for
    select u.priority, u.user_key
    from public.image_worker_queues as u
    where u.active
    order by u.priority desc, u.served_at, u.user_key;
  q record;
  v_walked boolean;        -- the cursor has no more queues
  v_ids uuid[] := '{}';
  v_job uuid;
  v_more uuid[];
  v_default_max integer;
  v_max integer;
  v_running integer;
  v_taken_by_user integer;
  -- The queues served by this claim, in the order served: priority, user, room at the start of
  -- the claim under the user's max_running (NULL: no limit), jobs taken, and whether a later
  -- round may take more. v_level_from: where the current priority's queues begin. Queues
  -- another claim is serving are put aside (v_busy*) until the priority's later rounds.
  v_qprio smallint[] := '{}';
  v_quser uuid[] := '{}';
  v_qroom integer[] := '{}';
  v_qtaken integer[] := '{}';
  v_qopen boolean[] := '{}';
  v_busy_prio smallint[] := '{}';
  v_busy_user uuid[] := '{}';
  v_level smallint;
  v_level_from integer := 1;
  v_open integer;
  v_share integer;
  v_got integer;
  v_progress boolean;
  i integer;
begin
  -- LIMIT NULL would mean no limit: a missing or non-positive limit claims nothing.
  if p_limit is null or p_limit < 1 then
    return;
  end if;
  select l.max_running into v_default_max
  from public.image_worker_limits as l
  where l.user_id = '00000000-0000-0000-0000-000000000000';

  open queues;
  loop
    fetch queues into q;
    v_walked := not found;

    -- The queues of one priority are all visited (the next queue is of a lower priority, or
    -- there is none): later rounds among them, before any lower priority.
    if (v_walked or q.priority < v_level) and cardinality(v_ids) < p_limit then
      -- The queues other claims were serving join in now.
      v_qprio := v_qprio || v_busy_prio;
      v_quser := v_quser || v_busy_user;
      v_qroom := v_qroom || array_fill(null::integer, array[cardinality(v_busy_user)]);
      v_qtaken := v_qtaken || array_fill(0, array[cardinality(v_busy_user)]);
      v_qopen := v_qopen || array_fill(true, array[cardinality(v_busy_user)]);
      loop
        v_progress := false;
        select count(*) into v_open
        from unnest(v_qopen[v_level_from:]) as o(open) where o.open;
        exit when v_open = 0;
        for i in v_level_from .. cardinality(v_quser) loop
          continue when not v_qopen[i];
          exit when cardinality(v_ids) >= p_limit;
          v_share := ceil((p_limit - cardinality(v_ids))::numeric / v_open)::integer;
          if v_qroom[i] is not null then
            select coalesce(sum(t.taken), 0) into v_taken_by_user
            from unnest(v_quser, v_qtaken) as t(user_key, taken)
            where t.user_key = v_quser[i];
            v_share := least(v_share, v_qroom[i] - v_taken_by_user);
          end if;
          if v_share <= 0 then
            v_qopen[i] := false;
            continue;
          end if;
          select array_agg(s.id) into v_more from (
            select j.id from public.jobs as j
            where j.status = 'pending' and j.priority = v_qprio[i]
              and coalesce(j.user_id, '00000000-0000-0000-0000-000000000000'::uuid) = v_quser[i]
              and j.run_after <= now()
              and j.id <> all (v_ids)  -- SKIP LOCKED does not skip our own locks
            order by j.created_at, j.id
            limit v_share
            for update skip locked
          ) as s;
          v_got := coalesce(cardinality(v_more), 0);
          if v_got > 0 then
            v_ids := v_ids || v_more;
            v_qtaken[i] := v_qtaken[i] + v_got;
            v_progress := true;
          end if;
          if v_got < v_share then
            v_qopen[i] := false;
          end if;
        end loop;
        exit when not v_progress or cardinality(v_ids) >= p_limit;
      end loop;
    end if;
    exit when v_walked or cardinality(v_ids) >= p_limit;
    if v_level is null or q.priority < v_level then
      v_level := q.priority;
      v_level_from := cardinality(v_quser) + 1;
      v_busy_prio := '{}';
      v_busy_user := '{}';
    end if;

    -- First round: this queue's oldest claimable job, unless its user is at max_running.
    select l.max_running into v_max from public.image_worker_limits as l
    where l.user_id = q.user_key;
    if not found then
      v_max := v_default_max;
    end if;
    if not pg_try_advisory_xact_lock(hashtext('image_worker_claim'), hashtext(q.user_key::text))
    then
      -- Another claim is serving this user right now. With max_running: the next claim will
      -- see it. Without: later, if this claim still has room.
      if v_max is null then
        v_busy_prio := v_busy_prio || q.priority;
        v_busy_user := v_busy_user || q.user_key;
      end if;
      continue;
    end if;
    if v_max is not null then
      select count(*) into v_running from public.jobs as j
      where coalesce(j.user_id, '00000000-0000-0000-0000-000000000000'::uuid) = q.user_key
        and j.status = 'running' and j.lease_expires_at > now();
      -- This user may have been served at another priority by this claim already.
      select coalesce(sum(t.taken), 0) into v_taken_by_user
      from unnest(v_quser, v_qtaken) as t(user_key, taken)
      where t.user_key = q.user_key;
      v_max := v_max - v_running;
      if v_max - v_taken_by_user <= 0 then
        continue;  -- at max_running: passed over, keeps its turn
      end if;
    end if;

    select j.id into v_job from public.jobs as j
    where j.status = 'pending' and j.priority = q.priority
      and coalesce(j.user_id, '00000000-0000-0000-0000-000000000000'::uuid) = q.user_key
      and j.run_after <= now()
    order by j.created_at, j.id
    limit 1
    for update skip locked;
    if not found then
      -- Nothing claimable now. Retire the queue if it holds no pending job at all (delayed
      -- retries and jobs locked by someone else keep it active). Under the queue row's lock,
      -- and checked again after taking it: a job that becomes pending activates the queue in
      -- the same transaction, taking that lock, so it is either seen here or activates after.
      perform 1 from public.image_worker_queues as u
      where u.priority = q.priority and u.user_key = q.user_key and u.active
      for update skip locked;
      if found and not exists (
        select 1 from public.jobs as j
        where j.status = 'pending' and j.priority = q.priority
          and coalesce(j.user_id, '00000000-0000-0000-0000-000000000000'::uuid) = q.user_key
      ) then
        update public.image_worker_queues as u set active = false
        where u.priority = q.priority and u.user_key = q.user_key;
      end if;
      continue;
    end if;

    v_ids := v_ids || v_job;
    v_qprio := v_qprio || q.priority;
    v_quser := v_quser || q.user_key;
    v_qroom := v_qroom || v_max;
    v_qtaken := v_qtaken || 1;
    v_qopen := v_qopen || true;
    exit when cardinality(v_ids) >= p_limit;
  end loop;
  close queues;

  if cardinality(v_ids) = 0 then
    return;
  end if;
  -- The queues served go to the back of the line, in the order they were served. Their rows
  -- are locked in key order first, as the triggers on jobs lock them: no deadlock.
  perform 1 from public.image_worker_queues as u
  where (u.priority, u.user_key) in (
    select s.priority, s.user_key
    from unnest(v_qprio, v_quser, v_qtaken) as s(priority, user_key, taken)
    where s.taken > 0)
  order by u.priority, u.user_key
  for update;
  update public.image_worker_queues as u
  set served_at = clock_timestamp() + s.n * interval '1 microsecond'
  from unnest(v_qprio, v_quser, v_qtaken) with ordinality as s(priority, user_key, taken, n)
  where u.priority = s.priority and u.user_key = s.user_key and s.taken > 0;

  -- The rows in the order they were claimed (the best first).
  return query
    with claimed as (
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
      where j.id = any (v_ids)
      returning j.*
    )
    select to_jsonb(c.*) from claimed as c
    order by array_position(v_ids, c.id);
end
$$;

-- heartbeat: extend the lease (and optionally set progress). True: held. False: the lease is
-- lost. NULL: held, but a cancel was requested: stop the work and end the job with
-- image_worker_mark_cancelled. (A worker from before cancellation reads NULL as a lost lease and
-- stops writing; the lease expires and rescue ends the job cancelled.)
create or replace function public.image_worker_heartbeat(
  p_id uuid,
  p_lease_token uuid,
  p_lease_seconds double precision,
  p_progress integer default null
) returns boolean
language plpgsql
set search_path = pg_catalog, public
as $$
declare
  v_cancel_requested_at timestamptz;
begin
  update public.jobs as j
  set lease_expires_at = now() + make_interval(secs => p_lease_seconds),
      progress = coalesce(p_progress, j.progress)
  where j.id = p_id and j.lease_token = p_lease_token and j.status = 'running'
  returning j.cancel_requested_at into v_cancel_requested_at;
  if not found then
    return false;
  end if;
  if v_cancel_requested_at is not null then
    return null;
  end if;
  return true;
end
$$;

-- complete_many: as before (see 20261127000000), and generation_ref is cleared.
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
          lease_expires_at = null, generation_ref = null
      from input as i
      where j.id = i.id and j.lease_token = i.lease_token and j.status = 'running'
      returning j.id
    )
    select i.id,
           exists (select 1 from done as d where d.id = i.id)
           or exists (select 1 from public.jobs as j
                      where j.id = i.id and j.lease_token = i.lease_token
                        and j.status = 'complete')
    from input as i;
end
$$;

-- fail: as before, and generation_ref is cleared.
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
      lease_expires_at = null, generation_ref = null
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

-- retry: as before, except that a job whose cancel was requested ends `cancelled` instead of
-- going back to pending. Returns the new status ('pending', 'failed', 'cancelled'), or null when
-- the caller no longer holds the lease.
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
  set status = case when j.cancel_requested_at is not null then 'cancelled'
                    when j.attempts >= p_max_attempts then 'failed'
                    else 'pending' end,
      error_message = case when j.cancel_requested_at is not null then j.error_message
                           else left(case when j.attempts >= p_max_attempts
                             then format('gave up after %s attempts: %s', j.attempts, p_error_message)
                             else p_error_message end, 1000) end,
      completed_at = case when j.cancel_requested_at is not null
                            or j.attempts >= p_max_attempts then now() end,
      generation_ref = case when j.cancel_requested_at is not null
                              or j.attempts >= p_max_attempts then null
                            else j.generation_ref end,
      run_after = now() + make_interval(secs => p_delay_seconds),
      lease_expires_at = null
  where j.id = p_id and j.lease_token = p_lease_token and j.status = 'running'
  returning j.status into new_status;
  return new_status;
end
$$;

-- release: give a job back untouched (graceful shutdown), the claim refunded; generation_ref is
-- kept so the next attempt resumes the generation. A job whose cancel was requested ends
-- `cancelled` instead.
create or replace function public.image_worker_release(
  p_id uuid,
  p_lease_token uuid
) returns boolean
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  update public.jobs as j
  set status = case when j.cancel_requested_at is not null then 'cancelled' else 'pending' end,
      progress = case when j.cancel_requested_at is not null then j.progress else 0 end,
      attempts = greatest(j.attempts - 1, 0),
      completed_at = case when j.cancel_requested_at is not null then now() end,
      generation_ref = case when j.cancel_requested_at is not null then null
                            else j.generation_ref end,
      started_at = case when j.cancel_requested_at is not null then j.started_at end,
      run_after = now(), lease_token = null, lease_expires_at = null
  where j.id = p_id and j.lease_token = p_lease_token and j.status = 'running';
  return found;
end
$$;

-- rescue: as before (expired leases back to pending, or failed when out of attempts, keeping
-- generation_ref when back to pending), and a job whose cancel was requested ends `cancelled`.
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
    set status = case when j.cancel_requested_at is not null then 'cancelled'
                      when j.attempts >= p_max_attempts then 'failed'
                      else 'pending' end,
        error_message = case when j.cancel_requested_at is null and j.attempts >= p_max_attempts
          then format('failed after %s attempts: the worker running it stopped responding '
                      'each time (lease expired; last worker %s)', j.attempts, j.worker_id)
          else j.error_message end,
        completed_at = case when j.cancel_requested_at is not null
                              or j.attempts >= p_max_attempts then now() end,
        progress = case when j.cancel_requested_at is not null
                          or j.attempts >= p_max_attempts then j.progress else 0 end,
        generation_ref = case when j.cancel_requested_at is not null
                                or j.attempts >= p_max_attempts then null
                              else j.generation_ref end,
        run_after = now(),
        lease_token = case when j.cancel_requested_at is not null
                             or j.attempts >= p_max_attempts then j.lease_token end,
        lease_expires_at = null
    from expired
    where j.id = expired.id and j.status = 'running' and j.lease_expires_at < now()
    returning j.id, j.status, j.attempts, j.worker_id;
end
$$;

-- mark_cancelled: the worker holding the job stopped it after a cancel request; the job ends
-- `cancelled`. Only by the lease holder; idempotent for it (a second call after a lost reply
-- answers true again).
create or replace function public.image_worker_mark_cancelled(
  p_id uuid,
  p_lease_token uuid
) returns boolean
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  update public.jobs as j
  set status = 'cancelled', completed_at = now(), lease_expires_at = null,
      generation_ref = null, cancel_requested_at = coalesce(j.cancel_requested_at, now())
  where j.id = p_id and j.lease_token = p_lease_token and j.status = 'running';
  if found then
    return true;
  end if;
  return exists (
    select 1 from public.jobs as j
    where j.id = p_id and j.lease_token = p_lease_token and j.status = 'cancelled'
  );
end
$$;

-- cancel_requested: which of these running jobs have a cancel request. One read for all of a
-- worker's jobs: its fallback when no Realtime UPDATE event told it.
create or replace function public.image_worker_cancel_requested(
  p_ids uuid[]
) returns setof uuid
language plpgsql
stable
set search_path = pg_catalog, public
as $$
begin
  return query
    select j.id from public.jobs as j
    where j.id = any (p_ids) and j.status = 'running' and j.cancel_requested_at is not null;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Cancelling: public.cancel_job(job_id) -> the job's status after the call.
--   pending -> cancelled at once; running -> cancel_requested_at set, 'running' returned (the
--   worker holding it stops and ends it cancelled); complete, failed, cancelled -> unchanged.
-- A signed-in user cancels their own jobs only: another user's job, or an unknown id, is
-- PT404 "no such job" (HTTP 404), the same answer, so ids of others cannot be probed. SECURITY
-- DEFINER: users have no UPDATE on jobs.
create or replace function public.cancel_job(job_id uuid) returns text
language plpgsql
security definer
set search_path = pg_catalog, public
as $$
declare
  v_role text := coalesce(auth.role(), '');
  v_job record;
begin
  select j.id, j.status, j.user_id into v_job
  from public.jobs as j
  where j.id = cancel_job.job_id
  for update;
  if not found or (v_role in ('anon', 'authenticated')
                   and v_job.user_id is distinct from auth.uid()) then
    raise exception using errcode = 'PT404', message = 'no such job',
      hint = 'A signed-in user can cancel only their own jobs.';
  end if;
  if v_job.status = 'pending' then
    update public.jobs as j
    set status = 'cancelled', completed_at = now(), cancel_requested_at = now(),
        generation_ref = null
    where j.id = v_job.id;
    return 'cancelled';
  elsif v_job.status = 'running' then
    update public.jobs as j
    set cancel_requested_at = coalesce(j.cancel_requested_at, now())
    where j.id = v_job.id;
    return 'running';
  end if;
  return v_job.status;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Replay and status: cancelled jobs are terminal. Replay touches them only when asked
-- (p_cancelled, `image-worker replay --cancelled`), even when named; a replayed job starts
-- afresh (generation_ref and cancel_requested_at cleared).

drop function if exists public.image_worker_replay(uuid[], boolean, double precision, boolean, boolean, text);
drop function if exists public.image_worker_replay_candidates(uuid[], double precision, boolean, integer);
drop function if exists public.image_worker_replay_eligible(text, timestamptz, timestamptz, boolean, double precision, boolean, boolean);

create or replace function public.image_worker_replay_eligible(
  p_status text,
  p_started_at timestamptz,
  p_lease_expires_at timestamptz,
  p_named boolean,
  p_stuck_seconds double precision,
  p_failed boolean,
  p_force boolean,
  p_cancelled boolean  -- no default: the earlier migrations' 7-argument calls stay unambiguous
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
    when 'cancelled' then coalesce(p_cancelled, false)
    else false
  end
$$;

create or replace function public.image_worker_replay_candidates(
  p_ids uuid[] default null,
  p_stuck_seconds double precision default null,
  p_failed boolean default false,
  p_limit integer default 10000,
  p_cancelled boolean default false
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
         extract(epoch from now() - coalesce(
           case when j.status in ('failed', 'cancelled') then j.completed_at end,
           j.started_at, j.created_at
         ))::double precision,
         extract(epoch from j.lease_expires_at - now())::double precision,
         coalesce(j.status = 'running' and j.lease_expires_at >= now(), false),
         public.image_worker_replay_eligible(
           j.status, j.started_at, j.lease_expires_at, p_ids is not null, p_stuck_seconds,
           p_failed, true, p_cancelled)
  from public.jobs as j
  where case when p_ids is not null then j.id = any(p_ids)
        else (j.status = 'running' and (
                j.lease_expires_at is null or j.lease_expires_at < now()
                or (p_stuck_seconds is not null
                    and j.started_at < now() - make_interval(secs => p_stuck_seconds))))
             or (j.status = 'failed' and p_failed)
             or (j.status = 'cancelled' and p_cancelled)
        end
  order by j.created_at, j.id
  limit p_limit
$$;

create or replace function public.image_worker_replay(
  p_ids uuid[],
  p_named boolean default false,
  p_stuck_seconds double precision default null,
  p_failed boolean default false,
  p_force boolean default false,
  p_reason text default null,
  p_cancelled boolean default false
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
             case when j.status in ('failed', 'cancelled') then j.completed_at end,
             j.started_at, j.created_at
           ))::double precision as age_seconds
    from public.jobs as j
    where j.id = any(p_ids)
      and public.image_worker_replay_eligible(
            j.status, j.started_at, j.lease_expires_at, p_named, p_stuck_seconds, p_failed,
            p_force, p_cancelled)
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
      lease_token = null,
      lease_expires_at = null,
      claim_trigger = null,
      cancel_requested_at = null,
      generation_ref = null,
      replayed_at = now(),
      replay_reason = left(p_reason, 500)
  from old
  where j.id = old.id
    and public.image_worker_replay_eligible(
          j.status, j.started_at, j.lease_expires_at, p_named, p_stuck_seconds, p_failed,
          p_force, p_cancelled)
  returning j.id, old.status, old.attempts, old.worker_id, old.age_seconds
$$;

-- Status: as before, with `cancelled` counted.
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
        'cancelled', count(*) filter (where status = 'cancelled'),
        'total', count(*))
      from public.jobs),
    'pending_delayed', (
      select count(*) from public.jobs where status = 'pending' and run_after > now()),
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
                 as lease_seconds_left,
               cancel_requested_at is not null as cancel_requested
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

-- ---------------------------------------------------------------------------------------------
-- Who may call what. Supabase's default privileges grant EXECUTE on every new function in public
-- to anon and authenticated, and PostgreSQL grants it to PUBLIC: revoke both, then grant.

revoke all on function public.image_worker_mark_cancelled(uuid, uuid) from public, anon, authenticated;
revoke all on function public.image_worker_cancel_requested(uuid[]) from public, anon, authenticated;
revoke all on function public.image_worker_replay_eligible(text, timestamptz, timestamptz, boolean, double precision, boolean, boolean, boolean) from public, anon, authenticated;
revoke all on function public.image_worker_replay_candidates(uuid[], double precision, boolean, integer, boolean) from public, anon, authenticated;
revoke all on function public.image_worker_replay(uuid[], boolean, double precision, boolean, boolean, text, boolean) from public, anon, authenticated;
revoke all on function public.cancel_job(uuid) from public, anon, authenticated;
grant execute on function public.image_worker_mark_cancelled(uuid, uuid) to service_role;
grant execute on function public.image_worker_cancel_requested(uuid[]) to service_role;
grant execute on function public.image_worker_replay_eligible(text, timestamptz, timestamptz, boolean, double precision, boolean, boolean, boolean) to service_role;
grant execute on function public.image_worker_replay_candidates(uuid[], double precision, boolean, integer, boolean) to service_role;
grant execute on function public.image_worker_replay(uuid[], boolean, double precision, boolean, boolean, text, boolean) to service_role;
grant execute on function public.cancel_job(uuid) to authenticated, service_role;
-- (claim, heartbeat, complete_many, fail, retry, release, rescue, status keep their grants:
-- CREATE OR REPLACE keeps a function's privileges.)

-- PostgREST caches the functions it can call and the columns it may write: reload now.
notify pgrst, 'reload schema';
