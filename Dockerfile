# fedmtl image: one image for every role (coordinator, clients, one-shot setup jobs);
# the role is the fedmtl subcommand given as the container command (see docker-compose.yml).
# UNTESTED HERE: no Docker engine runs on the machines this project is developed on
# (tests/test_compose.py checks that docker-compose.yml and this file line up).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    OMP_NUM_THREADS=2

WORKDIR /opt/fedmtl

# CPU build of torch first: a plain `pip install torch` pulls several GB of CUDA libraries.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

# The project folder IS the Flower app (pyproject.toml declares [tool.flwr.app]): the coordinator
# bundles it for every run, so fedmtl is installed in editable mode from here, as scripts/setup.sh does.
COPY pyproject.toml README.md .gitignore ./
COPY fedmtl ./fedmtl
COPY coordinator ./coordinator
COPY client ./client
COPY launch ./launch
COPY strategies ./strategies
COPY tasks ./tasks
COPY common ./common
RUN pip install -e .

# A non-root user; every mount point of docker-compose.yml exists and belongs to it, so named
# volumes start out writable by it (Docker copies the ownership of the image's folder).
RUN useradd --create-home --uid 10001 fedmtl \
 && mkdir -p /pki /ca /authorized /fedmtl-run /data /key \
             /keys/client-1 /keys/client-2 /keys/client-3 \
             /data/client_0 /data/client_1 /data/client_2 \
 && chown -R fedmtl:fedmtl /pki /ca /authorized /fedmtl-run /data /key /keys
USER fedmtl

# Fleet API of the coordinator (clients connect here).
EXPOSE 9092
ENTRYPOINT ["fedmtl"]
CMD ["--help"]
