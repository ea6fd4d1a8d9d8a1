"""Settings of the test project (read by ``djangoproject.setup()``)."""

SECRET_KEY = "tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
ROOT_URLCONF = "djangoproject.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
# Leave the process's logging alone (pytest's capture handlers included).
LOGGING_CONFIG = None
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "djangoproject.middleware.HeaderUserMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "onceonly.http.django.IdempotencyMiddleware",
]
# Each test sets its own (override_settings) with the store it runs on.
ONCEONLY_HTTP = {"store": "onceonly.stores.MemoryStore"}
