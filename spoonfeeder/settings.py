"""Spoon Feeder's one settings module. Every knob is an environment variable (see README.md) whose
default runs on a fresh checkout: SQLite in the data folder, django-q2's ORM broker, no Redis."""

from __future__ import annotations

import math
import os
from pathlib import Path

from spoonfeeder import config

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_PATH = config.data_path(os.environ.get("SPOONFEEDER_DATA_DIR", str(BASE_DIR / "data")))

DEBUG = config.env_bool("DEBUG", False)
ALLOWED_HOSTS = config.env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = config.env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "django_q",
    "template_partials",
    "spoonfeeder",
    "nodes",
    "renders",
    "stories",
    "scheduling",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "spoonfeeder.security.content_security_policy",
]

ROOT_URLCONF = "spoonfeeder.urls"
ASGI_APPLICATION = "spoonfeeder.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL", "").strip()
DATABASES = {"default": config.database(DATABASE_URL, DATA_PATH)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = config.redis_url(os.environ.get("REDIS_URL", "").strip())

# Installs (and test runs) sharing one Redis keep apart by their queue's name.
QUEUE_NAME = os.environ.get("SPOONFEEDER_QUEUE", "spoonfeeder")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": QUEUE_NAME,
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{QUEUE_NAME}:asgi"},
        }
    }
else:
    # The database cache crosses processes, so the web process sees the worker cluster's
    # heartbeat (django-q2 keeps it in the cache); the in-memory layer only ever carries
    # messages inside the web process, from the relay to its consumers. Its reads never write
    # (spoonfeeder/cache.py): pages are drawn inside a read transaction.
    CACHES = {"default": {"BACKEND": "spoonfeeder.cache.DatabaseCache", "LOCATION": "spoonfeeder_cache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# The worker cluster. `retry` must outlast the longest a task can wait in the cluster's prefetch
# plus run (STACK-NOTES.md), or a second copy starts while the first still runs; the system check
# spoonfeeder.E002 refuses a configuration that breaks this.
# A render holds a worker while it waits in or runs on its node, a story step while its model
# answers: the pool's slots plus a few (nodes.models.worker_shortfall says when it is short).
Q_WORKERS = int(config.env_number("SPOONFEEDER_WORKERS", 8, minimum=1))
Q_TIMEOUT = int(config.env_number("SPOONFEEDER_TASK_TIMEOUT", 1800, minimum=10))
Q_QUEUE_LIMIT = Q_WORKERS
# The longest deadline a task carries of its own (spoonfeeder.work.DEADLINES): a render attempt,
# which follows its job on the node for up to this long.
LONGEST_TASK = 6 * 3600
Q_RETRY = int(
    config.env_number(
        "SPOONFEEDER_TASK_RETRY",
        (1 + math.ceil((Q_QUEUE_LIMIT + 1) / Q_WORKERS)) * (max(Q_TIMEOUT, LONGEST_TASK) + 1) + 60,
        minimum=1,
    )
)
Q_CLUSTER = {
    "name": QUEUE_NAME,
    "workers": Q_WORKERS,
    "timeout": Q_TIMEOUT,
    "retry": Q_RETRY,
    "queue_limit": Q_QUEUE_LIMIT,
    "bulk": 1,
    # Our own rows and sweepers re-drive work; the broker never retries a failure by itself.
    "max_attempts": 1,
    "ack_failures": True,
    # Keep every result; spoonfeeder.tasks.prune removes the old ones.
    "save_limit": 0,
    "catch_up": False,
    "label": "Worker tasks",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    # The ORM broker with a doorbell (spoonfeeder/broker.py): a task queued on this machine wakes
    # a waiting cluster at once; `poll` is only how often it looks without a ring.
    Q_CLUSTER.update(orm="default", broker_class="spoonfeeder.broker.Doorbell", poll=1)

# Live updates: how often the web process looks for new event rows, how often it re-renders
# what changes with time alone (a worker's heartbeat going stale), and how long events are kept.
RELAY_POLL = config.env_number("SPOONFEEDER_RELAY_POLL", 0.05, minimum=0.01)
RELAY_TICK = config.env_number("SPOONFEEDER_RELAY_TICK", 2, minimum=0.5)
EVENT_RETENTION = config.env_number("SPOONFEEDER_EVENT_RETENTION", 86400, minimum=3600)
TASK_RETENTION = config.env_number("SPOONFEEDER_TASK_RETENTION", 7 * 86400, minimum=3600)
# A cluster whose heartbeat is older than this is shown as down.
WORKER_STALE_AFTER = config.env_number("SPOONFEEDER_WORKER_STALE_AFTER", 6, minimum=2)

# Work on the cluster (spoonfeeder/work.py): a row that holds work beats every BEAT seconds; one
# whose heartbeat is older than STALE seconds (on the database's clock) lost its worker, and the
# sweeper, looking every SWEEP_EVERY seconds while there is work, re-drives it. A failed render
# attempt waits RENDER_BACKOFF seconds (doubling with each attempt) before it is tried again.
BEAT = config.env_number("SPOONFEEDER_BEAT", 2, minimum=0.1)
STALE = config.env_number("SPOONFEEDER_STALE", 10, minimum=1)
SWEEP_EVERY = config.env_number("SPOONFEEDER_SWEEP_EVERY", 1, minimum=0.05)
RENDER_BACKOFF = config.env_number("SPOONFEEDER_RENDER_BACKOFF", 5, minimum=0)
# Megabytes a second the lab's network moves an input to a node: a job whose input a node made
# goes to that node (ComfyUI loads the file from its own output folder) unless another would
# finish it sooner by more than the upload would take. 0 ignores where inputs are.
RENDER_UPLOAD_RATE = config.env_number("SPOONFEEDER_UPLOAD_RATE", 50, minimum=0)
# A node that fails (refuses a job, answers garbage) gets no new work for a while: twice as long
# at each fault in a row, from BEAT seconds up to MAX_REST.
MAX_REST = config.env_number("SPOONFEEDER_MAX_REST", 60, minimum=1)
# A node that does not answer for this long has its running jobs retried elsewhere.
RENDER_NODE_TIMEOUT = config.env_number("SPOONFEEDER_RENDER_NODE_TIMEOUT", 30, minimum=1)
# Scheduled tasks (scheduling/fire.py): a due time later than this when the minute's tick looks
# was missed (Spoon Feeder was not running), and follows the task's rule for missed runs. A retry
# of a failed run waits SCHEDULE_BACKOFF seconds, doubling with each try.
SCHEDULE_GRACE = config.env_number("SPOONFEEDER_SCHEDULE_GRACE", 300, minimum=60)
SCHEDULE_BACKOFF = config.env_number("SPOONFEEDER_SCHEDULE_BACKOFF", 60, minimum=1)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
AUTHENTICATION_BACKENDS = ["spoonfeeder.security.ThrottledBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"
# Failed logins, counted per source address and per user name (spoonfeeder/security.py): after
# LOGIN_SLOW_AFTER failures each try waits twice as long as the last, and after LOGIN_LOCK_AFTER
# the source or name is locked out for LOGIN_LOCK_SECONDS. A successful login clears both counts.
LOGIN_SLOW_AFTER = int(config.env_number("SPOONFEEDER_LOGIN_SLOW_AFTER", 5, minimum=1))
LOGIN_LOCK_AFTER = int(config.env_number("SPOONFEEDER_LOGIN_LOCK_AFTER", 10, minimum=2))
LOGIN_LOCK_SECONDS = config.env_number("SPOONFEEDER_LOGIN_LOCK_SECONDS", 900, minimum=1)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Scripts and styles from this server only, no inline script or style, no eval, no frames; the
# middleware adds the page's own socket origin to connect-src.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-src 'none'; frame-ancestors 'none'"
)

# Request bodies: the web server (spoonfeeder/web.py) refuses a larger one before reading it. A
# request without a session cookie sends a login at most; uploads are workflow templates
# (renders.workflows.MAX_BYTES, 5 MB) with the form around them; the live socket carries nothing
# from the page.
BODY_LIMIT_ANONYMOUS = 64 * 1024
BODY_LIMIT = 1024 * 1024
UPLOAD_LIMIT = 5 * 1024 * 1024 + 512 * 1024
UPLOAD_PATHS = ("/renders/templates/", "/admin/")
SOCKET_MESSAGE_LIMIT = 64 * 1024
# How often an open live socket checks that its session still logs its user in (logging out
# closes it at once).
SOCKET_RECHECK = config.env_number("SPOONFEEDER_SOCKET_RECHECK", 3, minimum=0.1)
# Django's own limit agrees: a body the server let in never meets a bare "400 Bad Request".
DATA_UPLOAD_MAX_MEMORY_SIZE = UPLOAD_LIMIT

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_PATH / "static"
# Served straight from the source folders: a self-hosted app has no collectstatic step to forget.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
MEDIA_ROOT = DATA_PATH / "media"
MEDIA_URL = "media/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}

# The disk is touched last, once every other setting has been read without error: a mistake
# anywhere above leaves nothing half-made behind.
DATA_DIR = config.data_dir(DATA_PATH)
SECRET_KEY = config.secret_key(DATA_DIR)
for folder in (STATIC_ROOT, MEDIA_ROOT):
    folder.mkdir(exist_ok=True)
