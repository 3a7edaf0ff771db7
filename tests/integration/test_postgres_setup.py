"""docs/postgresql.md's least-privilege set-up works: its SQL, run as written (names made unique),
then the service, a call and `dispatch replay` as the role it creates, in the schema it creates."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.support import ServeProcess, wait_until

DOC = Path(__file__).resolve().parents[2] / "docs" / "postgresql.md"
ROSTER = (
    "village,group,phone,role,name\npg,1,13700000001,household,甲\npg,1,13700000008,leader,乙\n"
    "pg,1,13700000009,officer,丙\n"
)


def sql_blocks(section: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    part = text[text.index(f"## {section}") :]
    part = part[: part.index("\n## ", 1)]
    return re.findall(r"```sql\n(.*?)```", part, re.S)


def statements(block: str) -> list[str]:
    lines = [line for line in block.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def with_database(url: str, database: str, user: str = "", password: str = "") -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{password}@{host}:{parts.port or 5432}" if user else parts.netloc
    return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, ""))


@pytest.mark.e2e
def test_the_documented_schema_set_up_is_enough(postgres_url: str, tmp_path: Path) -> None:
    role, database = f"dispatch_app_{uuid.uuid4().hex[:8]}", f"county_{uuid.uuid4().hex[:8]}"
    cluster_block, database_block = sql_blocks("A schema in a shared database (least privilege)")

    def named(sql: str) -> str:
        return sql.replace("dispatch_app", role).replace("county", database)

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
        for statement in statements(cluster_block):
            admin.execute(named(statement))
    try:
        with psycopg.connect(with_database(postgres_url, database), autocommit=True) as admin:
            for statement in statements(database_block):
                admin.execute(named(statement))
        url = with_database(postgres_url, database, role, "change-me") + "?schema=dispatch"
        data = tmp_path / "data"
        serve = ServeProcess(data, {"DISPATCH_DATABASE_URL": url}).start()
        try:
            http = serve.client()
            imported = http.post("/v1/groups/import", content=ROSTER, headers={"Content-Type": "text/csv"})
            assert imported.status_code == 200, imported.text
            assert http.post("/v1/calls", json={"call_id": "pg-1", "caller": "13700000001"}).status_code == 202
            wait_until(lambda: http.get("/v1/incidents").json()["count"] == 1, what="the read model in PostgreSQL")
            assert serve.terminate() == 0
        finally:
            serve.kill()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
        replayed = subprocess.run(
            [sys.executable, "-m", "dispatch", "replay", "--data-dir", str(data), "--database-url", url],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert replayed.returncode == 0, replayed.stderr[-2000:]
        assert "into postgresql" in replayed.stdout, replayed.stdout
        with psycopg.connect(with_database(postgres_url, database), autocommit=True) as admin:
            tables = {
                (schema, name)
                for schema, name in admin.execute(
                    "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema <> "
                    "'pg_catalog' AND table_schema <> 'information_schema'"
                ).fetchall()
            }
        assert tables and all(schema == "dispatch" for schema, _ in tables), tables
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')
