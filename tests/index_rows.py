"""Rows of a real index file, read with plain sqlite3 (not through the code under test)."""
from __future__ import annotations

import sqlite3
from pathlib import Path


def rows(db: Path, sql: str, args=()) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()
