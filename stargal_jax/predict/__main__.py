"""`python -m stargal_jax.predict --help`."""

from stargal_jax.predict.cli import main

raise SystemExit(main())
