"""What the server, the model families and the client agree on, written once.

Imports neither torch nor Ray, so the ingress, the model deployments, `models/` and the `maas`
client can all depend on it: a fact stated here has no second home.
"""
