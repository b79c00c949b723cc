"""I/O behind the service's ports: worker HTTP client, scorers, limiters, sinks."""
