"""stargal_jax: unsupervised star-galaxy classification and segmentation of SDSS ugriz cutouts."""

__version__ = "0.1.0"

BANDS = ("u", "g", "r", "i", "z")
IMAGE_SHAPE = (5, 64, 64)
PIXEL_SCALE_ARCSEC = 0.396
# Array coordinate (row and column) of the object in a cutout: cutout = frame[y-32:y+32, x-32:x+32] for an object
# at integer pixel (x, y), the usual way SDSS cutouts are made. The simulator, the frames tool and the
# morphology measurements all use it.
CUTOUT_CENTRE = 32.0
