"""stargal_jax: unsupervised star-galaxy classification and segmentation of SDSS ugriz cutouts."""

__version__ = "0.1.0"

BANDS = ("u", "g", "r", "i", "z")
IMAGE_SHAPE = (5, 64, 64)
PIXEL_SCALE_ARCSEC = 0.396
