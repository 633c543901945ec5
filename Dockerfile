# optpilot: API and workers from one image.
#   docker build -t optpilot .                       (CPU torch from PyPI's default index)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t optpilot .
FROM python:3.11-slim

ARG TORCH_INDEX=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY optimizers ./optimizers
COPY tuner ./tuner
COPY service ./service

RUN if [ -n "$TORCH_INDEX" ]; then pip install --index-url "$TORCH_INDEX" "torch>=2.5,<3"; fi \
 && pip install . \
 && useradd --create-home --uid 1000 optpilot
USER optpilot

ENV DATABASE_URL=sqlite:////home/optpilot/optpilot.db
EXPOSE 8000
# The embedded default: API + one local worker + SQLite. docker-compose.yml overrides the command
# per service (db upgrade, serve --workers 0, worker --devices ...).
CMD ["optpilot", "serve", "--host", "0.0.0.0", "--port", "8000"]
