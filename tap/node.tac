"""A serf node that logs joins, answers the query ``status`` and logs the user event ``useless``.

Run it with ``twistd --nodaemon --python tap/node.tac``; configure it with
``FLYTESERF_NODE`` (default ``node``), ``FLYTESERF_BIND`` (``127.0.0.1:7946``),
``FLYTESERF_JOIN`` (comma-separated addresses, optional) and
``FLYTESERF_RPC`` (an RPC address for the ``serf`` CLI, optional).
"""

import os

from twisted.application import service
from twisted.internet import reactor
from twisted.logger import Logger

from flyteserf import Agent, AgentConfig
from flyteserf.addresses import parse_host_port
from flyteserf.rpc.service import RPCService

log = Logger(namespace="node")


def config_from_environment(default_name: str) -> AgentConfig:
    bind = parse_host_port(os.environ.get("FLYTESERF_BIND", "127.0.0.1:7946"), 7946, allow_port_zero=True)
    joins = tuple(a for a in os.environ.get("FLYTESERF_JOIN", "").split(",") if a)
    return AgentConfig(
        node_name=os.environ.get("FLYTESERF_NODE", default_name),
        bind=bind,
        tags={"role": default_name},
        start_join=joins,
    )


agent = Agent(config_from_environment("node"), reactor)
if os.environ.get("FLYTESERF_RPC"):  # the serf CLI can drive this node
    agent.attach(RPCService(reactor, agent, parse_host_port(os.environ["FLYTESERF_RPC"], 7373)))
agent.on_member("join", lambda event: log.info("joined: {names}", names=", ".join(m.name for m in event.members)))
agent.on_query("status", lambda query: f"{agent.node_name} is fine".encode())
agent.on_user_event("useless", lambda event: log.info("user event useless: {payload!r}", payload=event.payload))

application = service.Application("flyteserf node")
agent.setServiceParent(application)
