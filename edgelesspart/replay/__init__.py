"""Replay: a client that sends a test set to a running edge service and reports what it measured.

Owns reading images or arrays to replay (:mod:`.data`) and the concurrent replay with its report
of accuracy, exit mix, latency and cost (:mod:`.client`). It is TensorFlow-free and talks to a
service over HTTP only; it may import :mod:`edgelesspart.profiling` (prices), the runtime core and
the root helpers.
"""
