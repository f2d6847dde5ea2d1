-- What a fresh Supabase project provides before any user migration runs: the API roles,
-- the auth helpers that RLS policies call, the realtime publication and pgcrypto.
-- Idempotent; roles are cluster-wide so several devstack databases can share one server.

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
end
$$;

-- Supabase ships pgcrypto; the embedded server's build has no contrib modules. Nothing here needs
-- it (gen_random_uuid() is core since PostgreSQL 13), so install it where the server has it.
do $$
begin
  if exists (select 1 from pg_available_extensions where name = 'pgcrypto') then
    create extension if not exists pgcrypto with schema public;
  end if;
end
$$;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

-- Same definitions as Supabase's auth schema: the legacy per-claim setting first, then the
-- JSON claims set by PostgREST for each request.
create or replace function auth.uid() returns uuid
language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

-- Supabase grants table, sequence and function privileges to the API roles by default and relies
-- on RLS for row access.
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;

do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end
$$;

-- Realtime's own schema, as the Realtime server's tenant migrations leave it on every project
-- (supabase/realtime priv/repo/tenant_schema/realtime/: schema.sql, tables/messages.sql,
-- functions/topic.sql, functions/send.sql): what Broadcast from the database and Realtime
-- Authorization need. The daily partitions and the publication the server streams the table
-- from are the Realtime stand-in's to create, as the real server creates them. Not here: the
-- postgres_changes internals (realtime.subscription, apply_rls, …), which the stand-in does in
-- Python, and the owner role supabase_realtime_admin.
create schema if not exists realtime;
grant usage on schema realtime to anon, authenticated, service_role;

create table if not exists realtime.messages (
  topic text not null,
  extension text not null,
  payload jsonb,
  event text,
  private boolean default false,
  updated_at timestamp without time zone not null default now(),
  inserted_at timestamp without time zone not null default now(),
  id uuid not null default gen_random_uuid(),
  binary_payload bytea,
  constraint messages_payload_exclusive check (payload is null or binary_payload is null),
  constraint messages_pkey primary key (id, inserted_at)
) partition by range (inserted_at);
alter table realtime.messages enable row level security;
create index if not exists messages_inserted_at_topic_index on only realtime.messages
  (inserted_at desc, topic) where extension = 'broadcast' and private is true;
grant insert, select, update on table realtime.messages to anon, authenticated, service_role;

-- The channel topic being authorized (set by Realtime Authorization and by realtime.send).
create or replace function realtime.topic() returns text
language sql stable as $function$
select nullif(current_setting('realtime.topic', true), '')::text;
$function$;

-- Broadcast from the database: a row the Realtime server streams to the topic's channels. Never
-- raises: a failure is a WARNING and the caller's transaction goes on.
create or replace function realtime.send(
  payload jsonb,
  event text,
  topic text,
  private boolean default true
) returns void
language plpgsql as $function$
DECLARE
  generated_id uuid;
  final_payload jsonb;
BEGIN
  BEGIN
    generated_id := gen_random_uuid();

    -- Check if payload has an 'id' key, if not, add the generated UUID
    IF payload ? 'id' THEN
      final_payload := payload;
    ELSE
      final_payload := jsonb_set(payload, '{id}', to_jsonb(generated_id));
    END IF;

    -- Set the topic configuration
    EXECUTE format('SET LOCAL realtime.topic TO %L', topic);

    INSERT INTO realtime.messages (id, payload, event, topic, private, extension)
    VALUES (generated_id, final_payload, event, topic, private, 'broadcast');
  EXCEPTION
    WHEN OTHERS THEN
      RAISE WARNING 'WarnSendingBroadcastMessage: %', SQLERRM;
  END;
END;
$function$;
