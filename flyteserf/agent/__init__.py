"""The embedding API: handler registry, event filters, the agent's log ring and services."""
