# edge-bridge as a container image.
#
#   docker build -t edge-bridge .
#   docker run --rm -p 8080:8080 -v ./my.toml:/etc/edge-bridge/edge-bridge.toml:ro edge-bridge
#
# docker-compose.yml runs it next to mosquitto and Kafka. The image carries
# the example config and mappings from the repository; mount your own file over
# /etc/edge-bridge/edge-bridge.toml (and its mapping files next to it).

# Build stage: wheels for the bridge and every dependency. Everything it needs
# (confluent-kafka, msgspec, cryptography...) ships binary wheels for amd64 and
# arm64, so no compiler is needed here or in the final image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml ./
COPY bridge ./bridge
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    # A published port reaches a container only on 0.0.0.0; the HEALTHCHECK
    # below asks this port. This beats `listen` in the config file.
    EDGE_BRIDGE_LISTEN=0.0.0.0:8080

# A system user of its own: the daemon needs no privilege, only its spool.
RUN groupadd --system --gid 10001 edge-bridge \
 && useradd --system --uid 10001 --gid edge-bridge --no-create-home \
        --home-dir /var/lib/edge-bridge --shell /usr/sbin/nologin edge-bridge \
 && install -d -o edge-bridge -g edge-bridge -m 0750 \
        /var/lib/edge-bridge /var/lib/edge-bridge/spool

COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels edge-bridge \
 && rm -rf /wheels

COPY edge-bridge.toml /etc/edge-bridge/edge-bridge.toml
COPY mappings /etc/edge-bridge/mappings

USER edge-bridge
WORKDIR /var/lib/edge-bridge
# The spool (spool.path defaults to /var/lib/edge-bridge/spool): records kept
# while Kafka is away must survive a new container.
VOLUME ["/var/lib/edge-bridge"]
EXPOSE 8080

# /healthz answers while the process runs, whatever the brokers do: a restart
# would not bring Kafka back. Readiness (/readyz) is for whoever routes to it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# Exec form: edge-bridge is PID 1 and gets SIGTERM itself, drains in-flight
# records to Kafka and acknowledges them before it exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["edge-bridge", "run", "--config", "/etc/edge-bridge/edge-bridge.toml"]
