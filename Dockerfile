# One image for both workers; each fly.worker-*.toml picks the tier in its [processes] command.
# Slim base, no compiler: psycopg[binary] ships its own libpq, everything else is pure Python.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POLYCOPY_ENV=production

WORKDIR /app
# config/ and sql/ live beside the package: install in place so they travel with it.
COPY pyproject.toml setup.cfg README.md ./
COPY polycopy_actors ./polycopy_actors
COPY config ./config
COPY sql ./sql
RUN pip install -e . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin polycopy \
    && chown -R polycopy /app

USER polycopy
EXPOSE 9464
# SIGTERM/SIGINT: stop polling, flush, release the cold lock, exit 0 within shutdown_timeout_seconds.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "polycopy_actors", "--tier", "hot"]
