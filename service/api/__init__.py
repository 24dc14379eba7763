"""HTTP API: request/response schemas, routes, and the dependencies they share."""
