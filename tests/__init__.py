"""The flyteserf trial suite."""
