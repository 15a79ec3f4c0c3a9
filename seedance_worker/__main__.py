import sys

from seedance_worker.cli import main

sys.exit(main())
