FROM python:3.11-slim-bookworm

WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY flyteserf ./flyteserf
COPY twisted ./twisted
RUN pip install --no-cache-dir --root-user-action=ignore . \
    && cd / && rm -rf /src

WORKDIR /
# Serf gossip: UDP and TCP.
EXPOSE 7946/tcp 7946/udp 8090/tcp
ENTRYPOINT ["twist", "flyteserf"]
