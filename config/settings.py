"""Django settings, read from the environment (see docker/.env.example for every variable)."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured
from evaluation.core.endpoints import parse_allow_list
from routing.core.dispatch import STRATEGIES
from routing.core.embedding import DEFAULT_EMBEDDER

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str) -> bool:
    value = os.environ.get(name, default).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {value!r}")


def envint(name: str, default: str) -> int:
    value = os.environ.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def envsecret(name: str, default: str = "") -> str:
    """Read a secret from NAME, or from the file named by NAME_FILE (Docker secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE points at {path!r}, which cannot be read: {exc}") from None
    return os.environ.get(name, default)


def parse_database_url(url: str) -> dict[str, object]:
    """Turn postgresql://user:pass@host:port/name?host=/socket/dir into Django's DATABASES entry."""
    parsed = urlparse(url)
    if parsed.scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
        raise ImproperlyConfigured(
            f"DATABASE_URL must be a postgresql:// URL (SQLite is not supported), got scheme {parsed.scheme!r}"
        )
    query = parse_qs(parsed.query)
    host = unquote(parsed.hostname or "") or query.pop("host", [""])[0]
    name = unquote(parsed.path.lstrip("/"))
    if not name:
        raise ImproperlyConfigured("DATABASE_URL names no database (postgresql://user@host:port/NAME)")
    options = {key: values[-1] for key, values in query.items() if key != "host"}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parsed.username or "postgres"),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": host,
        "PORT": str(parsed.port or ""),
        "OPTIONS": options,
        "CONN_MAX_AGE": envint("DB_CONN_MAX_AGE", "0"),
    }


# DEBUG is off unless asked for; then (and only then) a development key stands in for a missing SECRET_KEY.
DEBUG = envbool("DEBUG", "false")
SECRET_KEY = envsecret("SECRET_KEY", "dev-only-insecure-secret-key-change-me" if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY must be set when DEBUG is off: set SECRET_KEY (or SECRET_KEY_FILE, a file holding it; "
        "`make demo` and `make run` keep one in .data/secret_key), or DEBUG=true for development only")
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

# Where the platform keeps its local state: the embedded database, the file broker.
DATA_DIR = Path(os.environ.get("AVENGERS_DATA_DIR", BASE_DIR / ".data")).resolve()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # runserver serves static files through WhiteNoise too (its own handler answers a bad path with a 500).
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "axes",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "config",  # first of ours: its ready() makes the local folders before the apps may write to them
    "avengers_web",
    "evaluation",
    "routing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # NUL in parameters and forms: 400; oversized forms: 413; every error on /api/ and /v1/ as JSON.
    "avengers_web.middleware.InputGuardMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]
# Reading needs a log-in unless AVENGERS_PUBLIC_READ=true opens the read-only pages to visitors; writes need a
# log-in and a role either way (avengers_web/roles.py), and the API always needs a token or a session.
PUBLIC_READ = envbool("AVENGERS_PUBLIC_READ", "false")
if not PUBLIC_READ:
    MIDDLEWARE.append("django.contrib.auth.middleware.LoginRequiredMiddleware")
# Log-in throttling (django-axes): after this many failed log-ins for one user name from one address, that pair
# is locked out for AVENGERS_LOGIN_LOCKOUT_MINUTES; a success resets the count. Last, as axes asks.
MIDDLEWARE.append("axes.middleware.AxesMiddleware")
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = envint("AVENGERS_LOGIN_FAILURE_LIMIT", "5")
AXES_COOLOFF_TIME = envint("AVENGERS_LOGIN_LOCKOUT_MINUTES", "15") / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False

# HTTPS: behind TLS, AVENGERS_HTTPS=true sends cookies only over HTTPS, redirects plain HTTP and sets HSTS
# (AVENGERS_HSTS_SECONDS, default a year; AVENGERS_HSTS_PRELOAD opts in to browsers' preload lists). Behind a
# proxy that ends TLS, AVENGERS_TLS_PROXY_HEADER=true trusts its X-Forwarded-Proto: https.
HTTPS = envbool("AVENGERS_HTTPS", "false")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = envbool("AVENGERS_SECURE_COOKIES", "true" if HTTPS else "false")
SECURE_SSL_REDIRECT = envbool("AVENGERS_SSL_REDIRECT", "true" if HTTPS else "false")
SECURE_HSTS_SECONDS = envint("AVENGERS_HSTS_SECONDS", "31536000" if HTTPS else "0")
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("AVENGERS_HSTS_INCLUDE_SUBDOMAINS", "true" if HTTPS else "false")
SECURE_HSTS_PRELOAD = envbool("AVENGERS_HSTS_PRELOAD", "false")
if envbool("AVENGERS_TLS_PROXY_HEADER", "false"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]  # probes and scrapes speak plain HTTP inside
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy (django-csp): scripts and styles only from this site, never inline (style attributes
# aside: bars and heatmap cells are sized and coloured with them); no frames, no plugins, forms post here.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "style-src-attr": ["'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

# Database: an external PostgreSQL with pgvector when DATABASE_URL is set, otherwise the embedded server in
# DATA_DIR/pg, started by the first connection of a process (config/embedded_postgres), never by these settings.
EMBEDDED_DB_DIR = DATA_DIR / "pg"
DATABASE_URL = envsecret("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": parse_database_url(DATABASE_URL)}
else:
    _db_name = os.environ.get("AVENGERS_DB_NAME", "avengers")
    DATABASES = {
        "default": {
            "ENGINE": "config.embedded_postgres",
            "NAME": _db_name,
            "USER": "postgres",
            "PASSWORD": "",
            "HOST": "",  # the server's socket folder, filled in by the first connection
            "PORT": "",
            "CONN_MAX_AGE": envint("DB_CONN_MAX_AGE", "0"),
            "EMBEDDED": {"PGDATA": str(EMBEDDED_DB_DIR), "DATABASE": _db_name},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "overview"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"  # made by config.apps at start-up, as the broker's folders
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve assets straight from the apps and static/ (no CDN, no collectstatic needed); collectstatic still works.
WHITENOISE_USE_FINDERS = True

# Uploads: files above this size are refused with a message; the dataset parser enforces it too.
MAX_UPLOAD_BYTES = envint("AVENGERS_MAX_UPLOAD_MB", "50") * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
DEFAULT_SPLIT_SEED = envint("AVENGERS_SPLIT_SEED", "42")
# How long GET /v1/models may take during "test connection".
MODEL_CHECK_TIMEOUT_S = float(os.environ.get("AVENGERS_MODEL_CHECK_TIMEOUT_S", "10"))
# Hosts, CIDRs, host:port and :port entries that model and embedding endpoints may be at; empty allows any.
MODEL_URL_ALLOW = os.environ.get("AVENGERS_MODEL_URL_ALLOW", "").strip()
try:
    parse_allow_list(MODEL_URL_ALLOW)
except ValueError as _exc:
    raise ImproperlyConfigured(str(_exc)) from None

# Embeddings are cached on disk by (embedder, text hash), shared with `python -m routing.offline`.
CACHE_DIR = Path(os.environ.get("AVENGERS_CACHE_DIR", Path.home() / ".cache" / "avengers"))
EMBEDDING_CACHE_PATH = CACHE_DIR / "embeddings.sqlite3"
# The embedder of new snapshots and embedding jobs when none is named. minilm-static embeds a query in about
# 0.1 ms of CPU, so that routing meets its latency and throughput targets on 2 CPU cores; minilm routes about
# 1 point more accurately offline and costs 12-20 ms of CPU per query (docs/BENCHMARKS.md).
EMBEDDER = os.environ.get("AVENGERS_EMBEDDER", DEFAULT_EMBEDDER)

# Evaluation engine: model calls, retries, and how workers notice a dead worker's batch.
GENERATION_TIMEOUT_S = float(os.environ.get("AVENGERS_GENERATION_TIMEOUT_S", "120"))
GENERATION_MAX_ATTEMPTS = envint("AVENGERS_GENERATION_MAX_ATTEMPTS", "4")
# An endpoint that failed 5 times in a row is not called for this long (its circuit is open), then probed once.
CIRCUIT_RESET_S = float(os.environ.get("AVENGERS_CIRCUIT_RESET_S", "30"))
EVAL_HEARTBEAT_S = float(os.environ.get("AVENGERS_EVAL_HEARTBEAT_S", "5"))
# A running batch whose heartbeat is older than this belongs to a dead worker and is handed out again.
EVAL_STALE_AFTER_S = float(os.environ.get("AVENGERS_EVAL_STALE_AFTER_S", "120"))
EVAL_SWEEP_EVERY_S = float(os.environ.get("AVENGERS_EVAL_SWEEP_EVERY_S", "30"))
# A batch that meets an open circuit waits and retries this many times before its samples are recorded as failed.
EVAL_MAX_DEFERRALS = envint("AVENGERS_EVAL_MAX_DEFERRALS", "3")
if EVAL_STALE_AFTER_S <= EVAL_HEARTBEAT_S:
    raise ImproperlyConfigured("AVENGERS_EVAL_STALE_AFTER_S must be larger than AVENGERS_EVAL_HEARTBEAT_S")
# Code grading runs model-written programs in a sandbox that refuses to run where it cannot confine them (no
# bubblewrap, no user namespaces). True runs them anyway in a weak tier that does not hold them: see docs/GRADING.md.
SANDBOX_ALLOW_WEAK = envbool("AVENGERS_SANDBOX_ALLOW_WEAK", "false")

# Routing service (POST /api/v1/route, /api/v1/answer, /v1/chat/completions).
# How often a serving process re-reads which snapshot is active and the models' endpoints.
# How often a web process reads the (id, revision) of the snapshot it serves (one indexed query; 0: every request):
# an activation or a label edit reaches every process within this time.
ROUTING_REFRESH_S = float(os.environ.get("AVENGERS_ROUTING_REFRESH_S", "0.5"))
ROUTING_RUNNER_UPS = envint("AVENGERS_ROUTING_RUNNER_UPS", "3")
# Concurrent queries of one process embedded in one call to a remote embedder, and the longest a query waits.
EMBED_MAX_BATCH = envint("AVENGERS_EMBED_MAX_BATCH", "32")
EMBED_MAX_WAIT_MS = float(os.environ.get("AVENGERS_EMBED_MAX_WAIT_MS", "2"))
# A routed request gives up (503) when no model has answered within this many seconds.
ROUTE_DEADLINE_S = float(os.environ.get("AVENGERS_ROUTE_DEADLINE_S", "60"))
# One model may use at most this much of it, so that a hung server leaves time for the next model.
ROUTE_MODEL_TIMEOUT_S = float(os.environ.get("AVENGERS_ROUTE_MODEL_TIMEOUT_S", "30"))
MAX_QUERY_CHARS = envint("AVENGERS_MAX_QUERY_CHARS", "16000")
MAX_SAMPLES = envint("AVENGERS_MAX_SAMPLES", "20")
MAX_ANSWER_TOKENS = envint("AVENGERS_MAX_ANSWER_TOKENS", "8192")
DEFAULT_ANSWER_TOKENS = envint("AVENGERS_DEFAULT_ANSWER_TOKENS", "1024")
DEFAULT_STRATEGY = os.environ.get("AVENGERS_DEFAULT_STRATEGY", "self_consistency")
DEFAULT_SAMPLES = envint("AVENGERS_DEFAULT_SAMPLES", "10")
DEFAULT_TEMPERATURE = float(os.environ.get("AVENGERS_DEFAULT_TEMPERATURE", "0.7"))
# model_switch consults the next model while the vote's agreement is below this.
MODEL_SWITCH_THRESHOLD = float(os.environ.get("AVENGERS_MODEL_SWITCH_THRESHOLD", "0.5"))
# Routing requests per minute per API token (a token's own limit overrides it); 0 turns the limit off.
RATE_LIMIT_PER_MINUTE = envint("AVENGERS_RATE_LIMIT_PER_MINUTE", "600")
# The decision log keeps each query's text; off: only its SHA-256 and length.
LOG_QUERY_TEXT = envbool("AVENGERS_LOG_QUERY_TEXT", "true")
# "background": written after the response, in bulk, by a thread; "inline": in the request's thread.
DECISION_LOG_MODE = os.environ.get("AVENGERS_DECISION_LOG", "background")
DECISION_LOG_FLUSH_S = float(os.environ.get("AVENGERS_DECISION_LOG_FLUSH_S", "0.2"))
if DECISION_LOG_MODE not in ("background", "inline"):
    raise ImproperlyConfigured("AVENGERS_DECISION_LOG must be background or inline")
if DEFAULT_STRATEGY not in STRATEGIES:
    raise ImproperlyConfigured(f"AVENGERS_DEFAULT_STRATEGY must be one of {', '.join(STRATEGIES)}")

# GET /metrics (Prometheus) answers requests from these networks (CIDRs, comma-separated; empty: none) and
# requests that send AVENGERS_METRICS_TOKEN as a bearer token. A request that came through a proxy (it carries
# X-Forwarded-For, Forwarded or X-Real-IP) needs the token. /healthz and /readyz need neither. Under gunicorn,
# PROMETHEUS_MULTIPROC_DIR (read by prometheus_client itself) names the folder where the processes add up.
METRICS_TOKEN = envsecret("AVENGERS_METRICS_TOKEN")
METRICS_ALLOW = [c.strip() for c in os.environ.get("AVENGERS_METRICS_ALLOW", "127.0.0.1/32,::1/128").split(",")
                 if c.strip()]
for _cidr in METRICS_ALLOW:
    try:
        ipaddress.ip_network(_cidr, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"AVENGERS_METRICS_ALLOW: {_cidr!r} is not an address or a network") from None
METRICS_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
# Set but empty, prometheus_client would write its files into the working directory.
if METRICS_MULTIPROC_DIR is not None and not METRICS_MULTIPROC_DIR.strip():
    raise ImproperlyConfigured("PROMETHEUS_MULTIPROC_DIR is set but empty: name a folder, or unset it")

# Rate limits count in this cache. The default is per process; give several serving processes one count
# with a shared cache, e.g. AVENGERS_CACHE_URL=redis://127.0.0.1:6379/1.
_cache_url = envsecret("AVENGERS_CACHE_URL")
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _cache_url}
          if _cache_url else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Celery: the default broker is kombu's filesystem transport in DATA_DIR/broker (messages, and the control
# exchange that `celery inspect` and the worker's remote control use), which needs no service; set
# CELERY_BROKER_URL=redis://host:6379/0 in production. config.apps makes the folders at start-up.
CELERY_BROKER_URL = envsecret("CELERY_BROKER_URL", "filesystem://")
_broker_dir = DATA_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", "false")
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    # Hands a dead worker's batches to live workers; run a worker with -B (or `celery beat`) to schedule it.
    "evaluation-sweep": {"task": "evaluation.tasks.evaluation_sweep", "schedule": EVAL_SWEEP_EVERY_S},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "avengers_web.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["avengers_web.permissions.RolePermission"],
    "DEFAULT_PAGINATION_CLASS": "avengers_web.api.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "avengers_web.schema.AutoSchema",  # errors documented in their JSON shape
    "EXCEPTION_HANDLER": "avengers_web.api.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "avengers_web.parsers.JSONParser",  # DRF's, refusing JSON nested too deep or holding NUL first
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Avengers API",
    "DESCRIPTION": "Route queries to a team of small language models (Zhang et al., 2025).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"embedded_postgres": {"level": "WARNING"}, "httpx": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
