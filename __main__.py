"""`python -m interact_custom <command>`."""
from .cli import main

raise SystemExit(main())
