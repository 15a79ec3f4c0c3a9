"""Test doubles shipped with the package (like ``celery.contrib.testing``).

``simulator`` is a local HTTP simulator of the Ark task API (used by the demo, the tests and the
benchmarks), ``redis`` starts an embedded ``redis-server`` on a free loopback port, and
``webhooks`` is a Standard Webhooks receiver that verifies every signature. Nothing in the product
imports this floor except the commands above it (``demo``, ``cli simulate``).
"""
