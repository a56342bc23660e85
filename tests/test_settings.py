"""Settings from the environment, and the checks that refuse a dangerous configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django_q.conf import Conf

from spoonfeeder import config, work

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_fresh_data_folder_gets_a_database_and_a_secret_key_kept_across_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = manage("check", SPOONFEEDER_DATA_DIR=str(data))
    assert first.returncode == 0, first.stderr
    key = (data / "secret_key").read_text()
    assert len(key) >= 50
    assert manage("check", SPOONFEEDER_DATA_DIR=str(data)).returncode == 0
    assert (data / "secret_key").read_text() == key


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"SPOONFEEDER_DATA_DIR": "/nonexistent-parent/data"}, "/nonexistent-parent does not exist"),
        ({"SPOONFEEDER_DATA_DIR": "/proc/self"}, "is not writable"),
        ({"DATABASE_URL": "mysql://me@db/x"}, "DATABASE_URL is not a PostgreSQL or SQLite URL"),
        ({"DATABASE_URL": "postgres://"}, "DATABASE_URL is not a PostgreSQL or SQLite URL"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL is not a Redis URL"),
        ({"REDIS_URL": "redis://127.0.0.1:notaport/0"}, "REDIS_URL is not a Redis URL"),
        ({"SPOONFEEDER_WORKERS": "two"}, "SPOONFEEDER_WORKERS='two' is not a number"),
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a yes/no value"),
    ],
)
def test_bad_configuration_is_one_line_that_says_what_to_do_and_makes_nothing(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    env = {"SPOONFEEDER_DATA_DIR": str(tmp_path / "data"), **env}
    result = manage("run", **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("spoonfeeder: ") and says in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_an_unreachable_redis_stops_start_up_with_a_hint(tmp_path: Path) -> None:
    result = manage("check", SPOONFEEDER_DATA_DIR=str(tmp_path), REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert "spoonfeeder.E003" in result.stderr
    assert "Start Redis or correct REDIS_URL" in result.stderr


def test_an_unreachable_database_stops_run_with_one_line(tmp_path: Path) -> None:
    result = manage("run", SPOONFEEDER_DATA_DIR=str(tmp_path), DATABASE_URL="postgres://u@127.0.0.1:1/x")
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[0]]
        and "cannot reach the database" in result.stderr
    )


def test_retry_not_longer_than_a_task_can_wait_and_run_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # django-q2 reads its settings once, at import: patch Conf itself (STACK-NOTES.md).
    monkeypatch.setattr(Conf, "TIMEOUT", 600)
    monkeypatch.setattr(Conf, "WORKERS", 2)
    monkeypatch.setattr(Conf, "QUEUE_LIMIT", 2)
    monkeypatch.setattr(Conf, "RETRY", 700)
    monkeypatch.setattr(work, "DEADLINES", {})
    errors = [e for e in run_checks() if e.id == "spoonfeeder.E002"]
    assert errors and "1800 s" in errors[0].msg
    assert "above 1800" in (errors[0].hint or "")

    monkeypatch.setattr(Conf, "RETRY", 1801)
    assert not [e for e in run_checks() if e.id == "spoonfeeder.E002"]

    # A task with a deadline of its own longer than the cluster's timeout counts with that.
    monkeypatch.setattr(work, "DEADLINES", {"renders.tasks.attempt": 3600.0})
    errors = [e for e in run_checks() if e.id == "spoonfeeder.E002"]
    assert errors and "renders.tasks.attempt's deadline 3601 s" in errors[0].msg
    assert "above 10803" in (errors[0].hint or "")


def test_the_default_retry_outlasts_every_tasks_own_deadline() -> None:
    assert work.DEADLINES["renders.tasks.attempt"] == settings.LONGEST_TASK
    assert "stories.tasks.step" in work.DEADLINES
    assert not [e for e in run_checks() if e.id in ("spoonfeeder.E001", "spoonfeeder.E002")]


def test_an_unbounded_prefetch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Conf, "QUEUE_LIMIT", 0)
    assert [e for e in run_checks() if e.id == "spoonfeeder.E001"]


def test_the_default_configuration_passes_every_check() -> None:
    assert [e for e in run_checks() if e.id.startswith("spoonfeeder.")] == []


def test_sqlite_runs_in_wal_mode_with_immediate_transactions(tmp_path: Path) -> None:
    db = config.database("", tmp_path)
    assert db["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in db["OPTIONS"]["init_command"]
    assert db["OPTIONS"]["timeout"] >= 5


def test_database_url_selects_postgresql() -> None:
    db = config.database("postgres://me@db.example:5433/films", Path("/unused"))
    assert (db["ENGINE"], db["HOST"], db["PORT"], db["NAME"]) == (
        "django.db.backends.postgresql",
        "db.example",
        5433,
        "films",
    )


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_fresh_data_folder_and_everything_in_it_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # A write through Django, and the modes looked at while the database is open (WAL and SHM exist).
    script = (
        "import os; from pathlib import Path; from django.db import connection; "
        "c = connection.cursor(); c.execute('create table t (x)'); c.execute('insert into t values (1)'); "
        "d = Path(os.environ['SPOONFEEDER_DATA_DIR']); "
        "print(' '.join(f'{p.name}={p.stat().st_mode & 0o777:o}' for p in sorted(d.rglob('*'))))"
    )
    result = manage("shell", "-c", script, SPOONFEEDER_DATA_DIR=str(data))
    assert result.returncode == 0, result.stderr
    modes = dict(item.split("=") for item in result.stdout.strip().splitlines()[-1].split())
    assert {"spoonfeeder.sqlite3", "spoonfeeder.sqlite3-wal", "spoonfeeder.sqlite3-shm", "secret_key", "media"} <= set(
        modes
    )
    assert all(m in ("600", "700") for m in modes.values()), modes
    assert mode(data) == 0o700


def test_an_open_data_folder_is_made_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "media" / "renders").mkdir(parents=True)
    files = [data / "spoonfeeder.sqlite3", data / "secret_key", data / "media" / "renders" / "a.png"]
    for f in files:
        f.write_bytes(b"x")
        f.chmod(0o644)
    for folder in (data, data / "media", data / "media" / "renders"):
        folder.chmod(0o755)
    (data / "link").symlink_to("/etc/hostname")  # not ours to change
    assert config.make_private(data) == 6
    assert all(mode(f) == 0o600 for f in files) and mode(data / "media" / "renders") == 0o700
    assert mode(Path("/etc/hostname")) & 0o044  # untouched through the link
    assert config.make_private(data) == 0
