-- image-worker: the operators' dashboard (contract v2, `image-worker dashboard`).
--
-- Runs unchanged on a Supabase project (SQL editor or `supabase db push`) after the earlier
-- image-worker migrations, and is idempotent: running it twice changes nothing.
--
-- One read-only function returns everything the page shows, as one JSON document, with ages
-- computed on the database's clock. The page asks for it every few seconds (the dashboard
-- server shares one answer between its open tabs), so every part of it reads a bounded set of
-- rows through a partial index, and none scans the table:
--
--   part                                   reads                     index
--   pending count, delayed, oldest age     the pending jobs          jobs_pending_idx
--   running, stuck, workers                the running jobs          jobs_running_lease_idx
--   oldest pending list                    p_list_limit rows         jobs_pending_idx
--   recent failures                        p_list_limit rows         jobs_failed_idx
--   per-minute complete/failed/cancelled,  the jobs that ended in    jobs_finished_idx (below)
--   pickups by claim_trigger               the window
--   complete, failed, cancelled counts     at most p_count_cap + 1   jobs_finished_idx
--                                          rows each
--
-- Finished jobs accumulate for ever, so their counts are exact up to p_count_cap and then
-- reported as the cap with the status listed in "counts_capped" (the page shows "10,000+"): an
-- exact count of millions of rows every few seconds is what this function must not do.
--
-- Pickups: how the jobs that started in the window were claimed (claim_trigger: realtime,
-- catchup, poll, sweep), counted over the jobs now running or ended in the window. A job keeps
-- only its latest claim, so a job claimed twice in the window counts once.

-- The jobs that ended (complete, failed or cancelled), by status and end time: the chart, the
-- pickups and the capped counts read it. On a very large existing table, building it blocks
-- writes to jobs while it runs (seconds per million rows); to avoid that, create it first by
-- hand with CREATE INDEX CONCURRENTLY and this same statement, which then skips it.
create index if not exists jobs_finished_idx on public.jobs (status, completed_at)
  where status in ('complete', 'failed', 'cancelled');

create or replace function public.image_worker_dashboard(
  p_list_limit integer default 20,
  p_window_seconds integer default 3600,
  p_count_cap integer default 10000
) returns jsonb
language sql
stable
set search_path = pg_catalog, public
as $$
  with params as (
    select least(greatest(coalesce(p_list_limit, 20), 1), 500) as list_limit,
           least(greatest(coalesce(p_window_seconds, 3600), 60), 86400) as window_seconds,
           least(greatest(coalesce(p_count_cap, 10000), 1), 10000000) as count_cap
  ),
  -- The chart's minutes: the current one (partial) and the ones before it, oldest first.
  minutes as (
    select m.minute
    from params as p,
         generate_series(
           date_trunc('minute', now()) - make_interval(mins => ceil(p.window_seconds / 60.0)::int - 1),
           date_trunc('minute', now()),
           interval '1 minute') as m(minute)
  ),
  since as (
    select min(minute) as at from minutes
  ),
  pending as (
    select count(*) as total,
           count(*) filter (where j.run_after > now()) as delayed,
           extract(epoch from now() - min(j.run_after) filter (where j.run_after <= now()))
             ::double precision as oldest_age_seconds
    from public.jobs as j
    where j.status = 'pending'
  ),
  running as (
    select j.id, j.worker_id, j.progress, j.attempts, j.started_at, j.lease_expires_at,
           j.claim_trigger, j.cancel_requested_at is not null as cancel_requested,
           extract(epoch from now() - j.started_at)::double precision as running_seconds,
           extract(epoch from j.lease_expires_at - now())::double precision as lease_seconds_left,
           coalesce(j.lease_expires_at < now(), true) as stuck
    from public.jobs as j
    where j.status = 'running'
  ),
  finished as (
    select j.status, j.completed_at, j.started_at, j.claim_trigger
    from public.jobs as j
    where j.status in ('complete', 'failed', 'cancelled')
      and j.completed_at >= (select at from since)
  ),
  -- Ordered by the index's second column, so each is an index-only scan that stops at the cap.
  capped_counts as materialized (
    select
      (select count(*) from (select 1 from public.jobs as j where j.status = 'complete'
                             order by j.completed_at
                             limit (select count_cap + 1 from params)) as c) as complete,
      (select count(*) from (select 1 from public.jobs as j where j.status = 'failed'
                             order by j.completed_at
                             limit (select count_cap + 1 from params)) as c) as failed,
      (select count(*) from (select 1 from public.jobs as j where j.status = 'cancelled'
                             order by j.completed_at
                             limit (select count_cap + 1 from params)) as c) as cancelled
  ),
  counts as materialized (
    select p.total as pending,
           (select count(*) from running) as running,
           least(c.complete, x.count_cap) as complete,
           least(c.failed, x.count_cap) as failed,
           least(c.cancelled, x.count_cap) as cancelled,
           array_remove(array[
             case when c.complete > x.count_cap then 'complete' end,
             case when c.failed > x.count_cap then 'failed' end,
             case when c.cancelled > x.count_cap then 'cancelled' end], null) as capped
    from pending as p, capped_counts as c, params as x
  )
  select jsonb_build_object(
    'now', now(),
    'window_seconds', (select window_seconds from params),
    'count_cap', (select count_cap from params),
    'counts', (
      select jsonb_build_object(
        'pending', c.pending, 'running', c.running, 'complete', c.complete,
        'failed', c.failed, 'cancelled', c.cancelled,
        'total', c.pending + c.running + c.complete + c.failed + c.cancelled)
      from counts as c),
    'counts_capped', (select to_jsonb(c.capped) from counts as c),
    'pending_delayed', (select delayed from pending),
    'oldest_pending_age_seconds', (select oldest_age_seconds from pending),
    'stuck_count', (select count(*) from running as r where r.stuck),
    -- Per minute of the window: jobs that ended complete, failed, cancelled.
    'throughput', (
      select coalesce(jsonb_agg(jsonb_build_object(
               'minute', m.minute,
               'complete', coalesce(f.complete, 0),
               'failed', coalesce(f.failed, 0),
               'cancelled', coalesce(f.cancelled, 0)) order by m.minute), '[]'::jsonb)
      from minutes as m
      left join (
        select date_trunc('minute', f.completed_at) as minute,
               count(*) filter (where f.status = 'complete') as complete,
               count(*) filter (where f.status = 'failed') as failed,
               count(*) filter (where f.status = 'cancelled') as cancelled
        from finished as f
        group by 1) as f on f.minute = m.minute),
    -- How the jobs that started in the window were claimed.
    'pickups', (
      select coalesce(jsonb_object_agg(t.trigger, t.jobs), '{}'::jsonb)
      from (
        select coalesce(s.claim_trigger, 'unknown') as trigger, count(*) as jobs
        from (
          select r.claim_trigger, r.started_at from running as r
          union all
          select f.claim_trigger, f.started_at from finished as f
        ) as s
        where s.started_at >= (select at from since)
        group by 1) as t),
    'running', coalesce((
      select jsonb_agg(jsonb_build_object(
               'id', r.id, 'worker_id', r.worker_id, 'progress', r.progress,
               'attempts', r.attempts, 'running_seconds', r.running_seconds,
               'lease_seconds_left', r.lease_seconds_left, 'claim_trigger', r.claim_trigger,
               'cancel_requested', r.cancel_requested, 'stuck', r.stuck)
             order by r.started_at, r.id)
      from (select * from running order by started_at, id
            limit (select list_limit from params)) as r), '[]'::jsonb),
    'stuck', coalesce((
      select jsonb_agg(jsonb_build_object(
               'id', r.id, 'worker_id', r.worker_id, 'progress', r.progress,
               'attempts', r.attempts, 'running_seconds', r.running_seconds,
               'lease_expired_seconds', -r.lease_seconds_left,
               'cancel_requested', r.cancel_requested)
             order by r.lease_expires_at nulls first, r.id)
      from (select * from running where stuck order by lease_expires_at nulls first, id
            limit (select list_limit from params)) as r), '[]'::jsonb),
    -- One row per worker holding jobs now: what it holds, and its most urgent lease.
    'workers', coalesce((
      select jsonb_agg(jsonb_build_object(
               'worker_id', w.worker_id, 'running', w.running, 'stuck', w.stuck,
               'min_lease_seconds_left', w.min_lease_seconds_left) order by w.worker_id)
      from (
        select r.worker_id, count(*) as running, count(*) filter (where r.stuck) as stuck,
               min(r.lease_seconds_left) as min_lease_seconds_left
        from running as r group by r.worker_id
        order by r.worker_id limit (select list_limit from params)) as w), '[]'::jsonb),
    'oldest_pending', coalesce((
      select jsonb_agg(jsonb_build_object(
               'id', j.id, 'attempts', j.attempts,
               'waiting_seconds', extract(epoch from now() - j.created_at)::double precision,
               'delayed_seconds', greatest(extract(epoch from j.run_after - now()), 0)
                 ::double precision)
             order by j.created_at, j.id)
      from (select * from public.jobs as p where p.status = 'pending'
            order by p.created_at, p.id limit (select list_limit from params)) as j),
      '[]'::jsonb),
    'recent_failures', coalesce((
      select jsonb_agg(jsonb_build_object(
               'id', j.id, 'attempts', j.attempts, 'worker_id', j.worker_id,
               'error_message', j.error_message,
               'failed_seconds_ago', extract(epoch from now() - j.completed_at)::double precision)
             order by j.completed_at desc, j.id)
      -- (completed_at desc, as jobs_failed_idx: the latest N rows, not a sort of every failure)
      from (select * from public.jobs as f where f.status = 'failed' and f.completed_at is not null
            order by f.completed_at desc limit (select list_limit from params)) as j),
      '[]'::jsonb)
  )
$$;

-- Callable by the service role only. Supabase's default privileges grant EXECUTE on every new
-- function in public to anon and authenticated, and PostgreSQL grants it to PUBLIC: revoke both.
revoke all on function public.image_worker_dashboard(integer, integer, integer) from public, anon, authenticated;
grant execute on function public.image_worker_dashboard(integer, integer, integer) to service_role;

-- PostgREST caches the functions it can call: have it reload now.
notify pgrst, 'reload schema';
