"""``python -m rl_training``: the same as ``rl-train``."""

from rl_training.cli import main

raise SystemExit(main())
