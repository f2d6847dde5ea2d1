-- image-worker: the provider's handle of a generation in progress (contract v2, "Never paying
-- twice").
--
-- Runs unchanged on a Supabase project (SQL editor or `supabase db push`) after the earlier
-- image-worker migrations, and is idempotent: running it twice changes nothing.
--
-- A hosted generation can outlive the worker that started it: Modal answers a long request with
-- 303 to a result URL, Replicate hands back a prediction, fal a queued request. The worker stores
-- that handle in jobs.generation_ref, under the lease, before it waits; every later attempt at the
-- job (after a crash, a SIGTERM release, a lost lease, a transient error) resumes from it instead
-- of paying for a new generation. The handle is worker bookkeeping: the app need not read it.
--
-- Who keeps and who clears it:
--   release and rescue keep it (the next claim resumes the same generation);
--   complete, fail, cancel and replay clear it (20261127000100_image_worker_tenancy.sql).
--
-- The column itself is added by 20261127000100_image_worker_tenancy.sql (whose insert trigger
-- also drops any generation_ref a signed-in user sends); it is added here too, `if not exists`,
-- so that this file also runs on a project that has not applied that one yet.

alter table public.jobs add column if not exists generation_ref jsonb;

-- set_generation_ref: record (or, with null, forget) the handle of the job's generation. Only the
-- lease holder writes it: false when the caller no longer holds the lease, and nothing changes.
create or replace function public.image_worker_set_generation_ref(
  p_id uuid,
  p_lease_token uuid,
  p_ref jsonb
) returns boolean
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  update public.jobs as j
  set generation_ref = p_ref
  where j.id = p_id and j.lease_token = p_lease_token and j.status = 'running'
    and j.generation_ref is distinct from p_ref;
  if found then
    return true;
  end if;
  -- Unchanged (a repeated write after a lost reply) counts as written, for the lease holder.
  return exists (
    select 1 from public.jobs as j
    where j.id = p_id and j.lease_token = p_lease_token and j.status = 'running'
  );
end
$$;

-- generation_ref_in_use: whether a job that will still run (pending, or running under any lease,
-- without a cancel request) refers to the generation p_ref_id. A worker that lost a job's lease
-- asks before cancelling the generation at the provider: while the job still refers to it,
-- whichever worker runs the job next resumes it, and cancelling it would pay for a second one.
-- (cancel_requested_at comes from the tenancy migration; read through to_jsonb so that this
-- function does not depend on the order the two files are applied in.)
create or replace function public.image_worker_generation_ref_in_use(
  p_id uuid,
  p_ref_id text
) returns boolean
language plpgsql
stable
set search_path = pg_catalog, public
as $$
begin
  return exists (
    select 1 from public.jobs as j
    where j.id = p_id
      and j.status in ('pending', 'running')
      and j.generation_ref ->> 'id' = p_ref_id
      and to_jsonb(j) ->> 'cancel_requested_at' is null
  );
end
$$;

-- Callable by the service role only (Supabase grants EXECUTE on new functions to anon and
-- authenticated by default, PostgreSQL to PUBLIC: revoke both).
revoke all on function public.image_worker_set_generation_ref(uuid, uuid, jsonb) from public, anon, authenticated;
revoke all on function public.image_worker_generation_ref_in_use(uuid, text) from public, anon, authenticated;
grant execute on function public.image_worker_set_generation_ref(uuid, uuid, jsonb) to service_role;
grant execute on function public.image_worker_generation_ref_in_use(uuid, text) to service_role;

-- PostgREST caches the functions it can call: have it see the new ones now.
notify pgrst, 'reload schema';
