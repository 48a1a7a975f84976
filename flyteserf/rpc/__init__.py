"""The Serf RPC ("IPC") protocol the ``serf`` CLI speaks (spec §4): server, test client, fakes."""
