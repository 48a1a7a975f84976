"""A serf node that sends the user event ``useless`` every 2 s, queries
``status`` every 5 s and logs every response.

Run it with ``twistd --nodaemon --python tap/guardian.tac``; it reads the
same environment variables as ``node.tac`` (``FLYTESERF_NODE`` defaults to
``guardian``).
"""

import os

from twisted.application import internet, service
from twisted.internet import reactor
from twisted.logger import Logger

from flyteserf import Agent, AgentConfig
from flyteserf.addresses import parse_host_port
from flyteserf.rpc.service import RPCService

log = Logger(namespace="guardian")


def config_from_environment(default_name: str) -> AgentConfig:
    bind = parse_host_port(os.environ.get("FLYTESERF_BIND", "127.0.0.1:7947"), 7946, allow_port_zero=True)
    joins = tuple(a for a in os.environ.get("FLYTESERF_JOIN", "").split(",") if a)
    return AgentConfig(
        node_name=os.environ.get("FLYTESERF_NODE", default_name),
        bind=bind,
        tags={"role": default_name},
        start_join=joins,
    )


agent = Agent(config_from_environment("guardian"), reactor)
if os.environ.get("FLYTESERF_RPC"):  # the serf CLI can drive this node
    agent.attach(RPCService(reactor, agent, parse_host_port(os.environ["FLYTESERF_RPC"], 7373)))


def send_useless() -> None:
    if agent.running:
        agent.event("useless", b"nothing to see", coalesce=False)


def ask_status() -> None:
    if not agent.running:
        return
    response = agent.query("status", request_ack=True)
    response.on_ack(lambda node: log.info("status ack from {node}", node=node))
    response.on_response(lambda answer: log.info("status from {node}: {text}", node=answer.from_, text=answer.payload.decode(errors="replace")))


application = service.Application("flyteserf guardian")
agent.setServiceParent(application)
internet.TimerService(2.0, send_useless).setServiceParent(application)
internet.TimerService(5.0, ask_status).setServiceParent(application)
