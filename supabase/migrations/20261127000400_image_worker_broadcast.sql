-- image-worker: every change of a job's status or progress, sent to its user over Supabase
-- Broadcast from the database (contract v2, "Watching jobs from the app").
--
-- Runs unchanged on a Supabase project (SQL editor or `supabase db push`) after the earlier
-- migrations, and is idempotent: running it twice changes nothing.
--
-- What the app gets: event `job_update` on the private topic `jobs:<user_id>`, payload
-- {id, status, progress, image_url, thumbnail_url, error_message}. Subscribe with
--   supabase.channel('jobs:' + user.id, { config: { private: true } })
--     .on('broadcast', { event: 'job_update' }, ({ payload }) => ...)
--     .subscribe()
-- after signing in (the channel's join carries the user's JWT). This is what Supabase
-- recommends at scale: postgres_changes checks every change against every subscriber, while a
-- broadcast goes to one topic, whose read permission is checked once, when the channel joins.
--
-- How (Supabase docs: "Broadcast from the database", "Realtime Authorization"):
--   * a trigger calls realtime.send(payload, event, topic, private) after a job is inserted and
--     after an update that changes its status or progress (a lease renewal that sets the same
--     progress sends nothing); jobs without a user_id have nobody to tell and send nothing;
--     realtime.send writes a row to realtime.messages, which the Realtime server streams to the
--     topic's channels; it never raises (a failure is a WARNING), so it cannot fail a job write;
--   * an RLS policy on realtime.messages lets a signed-in user read (receive) only the topic
--     `jobs:<their own id>`, and only its Broadcast. Nobody may send on it but the database (no
--     insert policy: a client's broadcast to a private channel is refused).
--
-- realtime.send and realtime.messages belong to Supabase Realtime (every project has them).
-- On a PostgreSQL without them this migration creates the function and does nothing else.

create or replace function public.image_worker_broadcast_job_update() returns trigger
language plpgsql
-- A user's own insert must be able to send too; realtime.messages has no insert policy.
security definer
set search_path = pg_catalog, public
as $$
begin
  perform realtime.send(
    jsonb_build_object(
      'id', new.id,
      'status', new.status,
      'progress', new.progress,
      'image_url', new.image_url,
      'thumbnail_url', new.thumbnail_url,
      'error_message', new.error_message),
    'job_update',
    'jobs:' || new.user_id::text,
    true);
  return null;
end
$$;

revoke all on function public.image_worker_broadcast_job_update() from public, anon, authenticated;

do $$
begin
  if to_regprocedure('realtime.send(jsonb, text, text, boolean)') is null then
    raise notice 'realtime.send not found (not a Supabase database?): job updates are not broadcast';
  else
    create or replace trigger jobs_broadcast_insert
      after insert on public.jobs
      for each row
      when (new.user_id is not null)
      execute function public.image_worker_broadcast_job_update();
    create or replace trigger jobs_broadcast_update
      after update of status, progress on public.jobs
      for each row
      when (new.user_id is not null
            and (old.status is distinct from new.status
                 or old.progress is distinct from new.progress))
      execute function public.image_worker_broadcast_job_update();
  end if;

  if to_regclass('realtime.messages') is null then
    raise notice 'realtime.messages not found (not a Supabase database?): no broadcast policy';
  else
    drop policy if exists image_worker_receive_own_job_updates on realtime.messages;
    -- Evaluated by Realtime when a private channel joins: realtime.topic() is the channel's
    -- topic, auth.uid() the user of the JWT it joined with.
    create policy image_worker_receive_own_job_updates on realtime.messages
      for select to authenticated
      using (
        realtime.messages.extension = 'broadcast'
        and (select realtime.topic()) = 'jobs:' || (select auth.uid())::text
      );
  end if;
end
$$;
