"""Serf on top of memberlist: members, intents, user events, queries, keys, snapshot."""
