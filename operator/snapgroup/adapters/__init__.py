"""The only code doing I/O: Kubernetes, database and object-store clients, each call with a timeout."""
