# syntax=docker/dockerfile:1
# The gateway image: one image, four roles (web, worker, beat, migrate) chosen by the command.
# Build: docker build -t llm-gateway .   Run: see docker-compose.yml and docs/operations.md.

# --- build: dependencies into a venv, static files collected ---------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
RUN python -m venv /opt/venv
# Dependencies first (a layer that survives source edits), then the source.
COPY pyproject.toml README.md ./
COPY gateway_project/__init__.py gateway_project/__init__.py
COPY providers/__init__.py providers/__init__.py
COPY tenants/__init__.py tenants/__init__.py
COPY routing/__init__.py routing/__init__.py
COPY usage/__init__.py usage/__init__.py
RUN /opt/venv/bin/pip install --upgrade pip && /opt/venv/bin/pip install -e .
COPY manage.py ./
COPY gateway_project gateway_project
COPY providers providers
COPY tenants tenants
COPY routing routing
COPY usage usage
COPY templates templates
COPY deploy/docker/entrypoint.sh deploy/docker/healthcheck.py deploy/docker/
# Admin, API docs and dashboard assets, served by the app (GATEWAY_SERVE_STATIC) or a CDN.
RUN SECRET_KEY=collectstatic-only /opt/venv/bin/python manage.py collectstatic --noinput

# --- runtime: the venv and the app, a non-root user -----------------------------------------
FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=gateway_project.settings \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus-multiproc \
    WEB_CONCURRENCY=2 \
    PORT=8000
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app --shell /usr/sbin/nologin gateway
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=gateway:gateway /app /app
RUN chmod 0755 /app/deploy/docker/entrypoint.sh
USER 10001:10001
EXPOSE 8000
# Per role: web -> /health (no database or Redis needed; readiness is /health/ready), beat ->
# its heartbeat, worker -> celery inspect ping.
HEALTHCHECK --interval=30s --timeout=25s --start-period=30s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py"]
ENTRYPOINT ["/app/deploy/docker/entrypoint.sh"]
CMD ["web"]
