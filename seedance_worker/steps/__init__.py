"""Downstream steps: Celery tasks that take the Outcome and return it enriched.

``download`` (``seedance.download_video``, over ``fetch``'s allow-listed resumable GET and
``storage``), ``charge`` (``seedance.charge_usage``, one ledger entry per task), ``notify``
(``seedance.notify``, a signed Standard Webhook, once). Each keeps its own small Redis state with
keys from keys.py and scripts in ``lua/``; from the engine they use only
``handoff.extend_lease`` and ``handoff.still_tracked``.
"""
