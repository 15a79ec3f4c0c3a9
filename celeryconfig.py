"""Reference deployment config for `celery -A seedance_worker worker`.

Every value comes from SEEDANCE_* variables through seedance_worker.wiring.conf.celery_config, so a
deployment changes the environment, not this file. A host app uses seedance_worker.install(app).
"""

from seedance_worker.settings import get_settings
from seedance_worker.wiring.conf import celery_config

globals().update(celery_config(get_settings()))
