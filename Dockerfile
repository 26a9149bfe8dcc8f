# The schedctl image the Helm chart (helm/schedctl) runs: the scheduler, the exporter sidecar
# and the `db upgrade` init container all use it, with `schedctl` as the entrypoint.
#
#   docker build -t <your-registry>/schedctl:0.1.0 .
#
# Tasks run inside this image: build your own image FROM it to add the commands and Python
# modules your tasks call.

# Pinned to an exact Python patch release and Debian release; bump deliberately.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, non-root uid/gid (10001) that the chart's securityContext names too.
RUN groupadd --system --gid 10001 schedctl \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/schedctl --create-home \
      --shell /usr/sbin/nologin schedctl

# Installed the way the README installs it: `pip install .` from the repository root.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scheduler_core ./scheduler_core
COPY exporter ./exporter
RUN pip install . \
 && rm -rf /src \
 && install -d -o 10001 -g 10001 /var/lib/schedctl /etc/schedctl

WORKDIR /var/lib/schedctl
USER 10001:10001
# 8090: the scheduler's /health; 9464: the exporter's /metrics, /health, /ready and API.
EXPOSE 8090 9464
ENTRYPOINT ["schedctl"]
CMD ["--help"]
