"""The engine: one poll chain per remote job, from registration to the terminal hand-off.

``store`` (with ``lua/``) is the only reader and writer of job state; ``schedule`` is pure timing
and every lease rule; ``jobs`` builds registrations and publishes polls by task name; ``poll`` is
the ``seedance.poll`` task (adopt -> begin -> gate -> fetch -> act on ``decide()``); ``handoff``
fires the downstream chain once; ``sweep`` re-drives jobs whose lease ran out; ``dispatch`` is the
worker thread that publishes parked polls and runs the sweeper. Imports only the ground floor.
"""
