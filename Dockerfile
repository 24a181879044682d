# The lockgate worker image. Build from the repository root: `docker build -t lockgate .`
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY lockgate ./lockgate
COPY gates ./gates
COPY activities ./activities
COPY workflows ./workflows
COPY worker.py ./
COPY policies ./policies
RUN pip install --no-cache-dir . && useradd --system lockgate
USER lockgate
ENV LOCKGATE_POLICY_DIR=/app/policies
CMD ["lockgate", "worker"]
