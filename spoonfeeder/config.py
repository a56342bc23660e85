"""Reading Spoon Feeder's configuration from the environment.

Everything here runs while settings are imported, so a mistake must surface as a ConfigError
whose message says what is wrong and what to do; manage.py prints it as one line.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured


class ConfigError(ImproperlyConfigured):
    pass


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a yes/no value; use true or false")


def env_number(name: str, default: float, minimum: float = 0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw} is too small; use at least {minimum:g}")
    return value


def env_list(name: str, default: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, default).split(",") if part.strip()]


def data_path(raw: str) -> Path:
    return Path(raw).expanduser().resolve()


def data_dir(path: Path) -> Path:
    """The data folder, created (private) if only its last part is missing, and proven writable.

    Everything the process writes from here on is private to its user (umask 077): the database
    and its WAL and SHM files hold live session keys, the key folder the secret key.
    """
    hint = "create it or set SPOONFEEDER_DATA_DIR to a writable folder"
    os.umask(0o077)
    if not path.exists():
        if not path.parent.is_dir():
            raise ConfigError(f"data folder {path} cannot be made: {path.parent} does not exist; {hint}")
        try:
            path.mkdir(mode=0o700)
        except OSError as e:
            raise ConfigError(f"data folder {path} cannot be made ({e.strerror}); {hint}") from None
    if not path.is_dir():
        raise ConfigError(f"data folder {path} is not a folder; {hint}")
    try:
        # Try it rather than ask os.access(), which says yes to root on any folder.
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError:
        raise ConfigError(f"data folder {path} is not writable; {hint}") from None
    return path


def make_private(folder: Path) -> int:
    """Take away every other user's access to the data folder and all in it (folders 0700,
    files 0600); how many were open to others. Links are left alone: they are not ours."""
    changed = 0
    paths = [folder]
    for root, dirs, files in os.walk(folder):
        paths += [Path(root, name) for name in dirs + files]
    for path in paths:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue  # gone meanwhile (a finished SQLite journal)
        if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
            continue
        path.chmod(0o700 if stat.S_ISDIR(st.st_mode) else 0o600)
        changed += 1
    return changed


def secret_key(folder: Path) -> str:
    """SECRET_KEY from the environment, or generated once and kept in the data folder."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    path = folder / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(50)
    # O_EXCL: when two processes start at once, the first key written wins for both.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def database(url: str, folder: Path) -> dict[str, Any]:
    if not url:
        config: dict[str, Any] = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": folder / "spoonfeeder.sqlite3",
        }
    else:
        try:
            config = dict(dj_database_url.parse(url))
        except Exception:
            config = {}
        engine = config.get("ENGINE", "")
        if engine not in ("django.db.backends.postgresql", "django.db.backends.sqlite3") or (
            engine.endswith("postgresql") and not config.get("NAME")
        ):
            raise ConfigError(
                "DATABASE_URL is not a PostgreSQL or SQLite URL; "
                "use postgres://USER@HOST:5432/NAME, or unset it for the embedded SQLite"
            )
    if config["ENGINE"].endswith("sqlite3"):
        name = str(config["NAME"])
        config["OPTIONS"] = {
            # IMMEDIATE: take the write lock when a transaction starts, so concurrent writers
            # wait for the busy timeout instead of failing on a lock upgrade (STACK-NOTES.md).
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
        # A connection is kept open for good: opening one (and its PRAGMAs) costs more than
        # most of the queries a task makes; there is no server to drop it.
        config["CONN_MAX_AGE"] = None
        # Tests that start real worker processes need a test database that is a file.
        config["TEST"] = {"NAME": str(Path(name).with_suffix("")) + "-test.sqlite3"}
    else:
        config["CONN_MAX_AGE"] = 0
    return config


def redis_url(url: str) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = parts._replace(scheme="")
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ConfigError("REDIS_URL is not a Redis URL; use redis://HOST:6379/0, or unset it")
    return url
