"""``python -m ppl_vae`` is the ``ppl-vae`` command."""

from .cli import main

raise SystemExit(main())
