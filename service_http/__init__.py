"""Shared HTTP plumbing of the EdgeLessPart services: errors, admission, metrics, auth, WSGI.

Both services (``edge_runtime``, the edge Flask app, and ``cloud_functions``, the cloud HTTP
entry and local Lambda server) import this package and the TF-free runtime core, never each
other. It owns what every service does the same way: typed errors rendered once as JSON
(:mod:`~service_http.errors`), admission control with a bounded waiting room and 429
(:mod:`~service_http.admission`), Prometheus counters (:mod:`~service_http.metrics`), bearer
tokens and which routes they guard (:mod:`~service_http.auth`), and serving under waitress
(:mod:`~service_http.wsgi`). Must not import tensorflow; nothing happens at import.
"""
