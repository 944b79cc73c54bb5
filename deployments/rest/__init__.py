"""The HTTP side of the gateway: the app factory (`app.create_app`), the v1 and v2 route modules
and what they share. Buildable in-process over any Gateway, with or without Ray Serve."""
