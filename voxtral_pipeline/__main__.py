"""``python -m voxtral_pipeline`` is the ``voxtral-pipeline`` command."""

import sys

from voxtral_pipeline.cli import main

sys.exit(main())
