# The lockgate worker image.
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
CMD ["python", "worker.py"]
