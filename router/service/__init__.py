"""One request's path through the gateway: the coordinator (`coordinator.py`) and the flows it sequences."""
