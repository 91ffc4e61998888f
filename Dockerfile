# One image for every Cascade process (a worker per tier, the simulator, the submit CLI); see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml README.md ./
# Every folder pyproject.toml's [tool.setuptools.package-dir] maps into `cascade` (tests/test_compose.py checks).
COPY cascade ./cascade
COPY cli ./cli
COPY config ./config
COPY examples ./examples
COPY ledger ./ledger
COPY ops ./ops
COPY producer ./producer
COPY simulator ./simulator
COPY tuning ./tuning
COPY verifiers ./verifiers
COPY worker ./worker
RUN pip install --no-cache-dir .

# /app/config and /app/examples stay in the image as the default configuration and the demo's input;
# docker-compose.yml mounts the host's folders over them read-only.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cascade
USER cascade

CMD ["cascade", "--help"]
