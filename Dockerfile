# dispatch as a container image. Build: docker build -t dispatch:0.1.0 .
# Runs `dispatch serve` as an unprivileged user; point it at NATS and PostgreSQL with DISPATCH_*
# (README, "Configuration"); without DISPATCH_NATS_URL it starts its own embedded nats-server in
# /var/lib/dispatch (a single node: mount a volume there).
# Reproducible: the base is pinned by digest (the multi-platform index of python:3.11-slim-bookworm,
# Python 3.11.16 on Debian 12; bump it deliberately: `docker buildx imagetools inspect
# python:3.11-slim-bookworm`), and every Python package is installed at the version the test suite
# ran (constraints.txt, written by scripts/constraints from the tested venv). The build backend
# (setuptools, pyproject's build-system) is not in it: pip freeze leaves it out.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY dispatch ./dispatch
RUN python -m venv /opt/dispatch \
 && PIP_CONSTRAINT=/src/constraints.txt /opt/dispatch/bin/pip install --no-cache-dir --disable-pip-version-check '.[fast]'

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 dispatch \
 && useradd --system --uid 10001 --gid dispatch --home-dir /var/lib/dispatch --shell /usr/sbin/nologin dispatch \
 && install -d -o dispatch -g dispatch -m 0700 /var/lib/dispatch
COPY --from=build /opt/dispatch /opt/dispatch
ENV PATH=/opt/dispatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DISPATCH_DATA_DIR=/var/lib/dispatch \
    DISPATCH_HTTP=0.0.0.0:8080 \
    DISPATCH_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/dispatch
VOLUME /var/lib/dispatch
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["dispatch"]
CMD ["serve"]
