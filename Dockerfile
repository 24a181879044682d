# The lockgate image: worker, set-up, inbox and codec server (the command picks which).
#   docker build -t lockgate:0.2.0 .
# The build context is an allowlist (.dockerignore): no virtualenv, state, secrets or .git.
#
# Base: an exact tag, the same Python minor as CI. The release pipeline pins it by digest as well
# (`docker buildx imagetools inspect python:3.11.14-slim-trixie` gives it), building with
#   --build-arg PYTHON_IMAGE=python:3.11.14-slim-trixie@sha256:<digest>
# and bumps the tag and requirements.lock together (deploy/README.md, "Upgrade").
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/lockgate
# Every package, build tools included, from requirements.lock and only if its hash matches.
COPY requirements.lock /tmp/requirements.lock
RUN /opt/lockgate/bin/pip install --require-hashes --no-deps -r /tmp/requirements.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lockgate ./lockgate
COPY gates ./gates
COPY activities ./activities
COPY workflows ./workflows
# lockgate itself, built with the locked setuptools (no index, no build isolation), then the build
# tools leave the runtime.
RUN /opt/lockgate/bin/pip install --no-deps --no-index --no-build-isolation . \
 && /opt/lockgate/bin/pip uninstall --yes setuptools wheel

FROM ${PYTHON_IMAGE}
# A numeric user and group, so Kubernetes' runAsNonRoot can verify them; the two folders lockgate
# writes (state, and the credentials `lockgate setup` leaves for the workers) are its own.
RUN groupadd --system --gid 10001 lockgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/lockgate \
      --shell /usr/sbin/nologin lockgate \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/lockgate /run/lockgate
COPY --from=build /opt/lockgate /opt/lockgate
COPY deploy/docker-entrypoint.sh /usr/local/bin/lockgate-entrypoint
COPY policies /app/policies
ENV PATH=/opt/lockgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOCKGATE_POLICY_DIR=/app/policies \
    LOCKGATE_STATE_DIR=/var/lib/lockgate
WORKDIR /app
USER 10001:10001
# The worker's check (its command is the default); compose and Kubernetes set their own per service.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["python", "-m", "lockgate.health", "worker"]
ENTRYPOINT ["/usr/local/bin/lockgate-entrypoint"]
CMD ["lockgate", "worker"]
