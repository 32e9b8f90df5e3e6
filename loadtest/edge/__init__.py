"""The HTTP edge benchmark (`make bench-edge`): the service's CPU per request against a bare Starlette app."""
