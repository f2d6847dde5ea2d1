from devstack.stack import DevStack


async def test_stack_starts_and_prints_env(stack: DevStack) -> None:
    assert stack.url.startswith("http://127.0.0.1:")
    env = stack.env
    assert env["SUPABASE_SERVICE_ROLE_KEY"] != env["SUPABASE_ANON_KEY"]
    assert await stack.pool.fetchval("show wal_level") == "logical"
