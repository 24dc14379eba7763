"""The open-loop load generator for the service (`python -m loadtest`): a client, so it lives
outside the server package and the service's dependencies."""
