"""`python -m stargal_jax.sdss_frames ...`: see `stargal_jax.sdss_frames.cli`."""

from stargal_jax.sdss_frames.cli import main

if __name__ == "__main__":
  raise SystemExit(main())
