from devstack.stack import DevStack


async def test_stack_starts_and_prints_env(stack: DevStack) -> None:
    assert stack.url.startswith("http://127.0.0.1:")
    env = stack.env
    assert env["SUPABASE_SERVICE_ROLE_KEY"] != env["SUPABASE_ANON_KEY"]
    assert await stack.pool.fetchval("show wal_level") == "logical"


def test_devstack_up_prints_env_and_stops_cleanly_on_ctrl_c() -> None:
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    # A temp dir of its own (that the postgres user can traverse), to see what is left behind.
    tmp_path = Path(tempfile.mkdtemp(prefix="devstack-up-test-"))
    tmp_path.chmod(0o755)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack", "up", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    output = "".join(lines)
    for name in ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "CLOUDINARY_URL", "GENERATOR_URL"):
        assert f"export {name}=" in output
    assert "/admin/realtime/" in output and "/admin/rest/" in output
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(30) == 0
        assert list(tmp_path.glob("devstack-pg-*")) == []
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
