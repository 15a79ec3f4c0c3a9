"""Wiring into Celery: the only floor that connects signals or patches libraries.

``app`` (the bundled app, ``install(app)`` for host apps, ``ensure_app``, ``reset_caches``),
``conf`` (the Celery settings derived from Settings), ``checks`` (what refuses a worker start),
``signals`` (every handler, each returning at once for an app not ours), ``registry`` (which apps
are ours) and ``compat`` (the kombu and billiard work-arounds).
"""
