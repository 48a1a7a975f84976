"""SWIM + Lifeguard membership, as memberlist 0.2.2 speaks it."""
