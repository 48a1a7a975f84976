from twisted.application.service import ServiceMaker

flyteserf = ServiceMaker(
    "flyteserf",
    "flyteserf.tap",
    "A Serf cluster member, wire-compatible with the serf agent.",
    "flyteserf",
)
