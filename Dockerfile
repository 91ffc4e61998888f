# One image for every Cascade process (workers per tier, later beat/metrics); see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# README.md* matches nothing while there is no README; pyproject.toml keeps the COPY valid.
COPY pyproject.toml README.md* ./
# Every package in pyproject's [tool.setuptools.packages.find] include (tests/test_compose.py checks).
COPY worker ./worker
COPY producer ./producer
COPY verifiers ./verifiers
COPY simulator ./simulator
RUN pip install --no-cache-dir .

# Default configuration; docker-compose.yml mounts ./config over it read-only.
COPY config ./config

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cascade
USER cascade

CMD ["cascade", "--help"]
