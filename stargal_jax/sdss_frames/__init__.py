"""Real SDSS frames -> the study's 5-band 64x64 cutouts, with per-pixel noise maps.

Input: the five calibrated SDSS "frame" files of one field, `frame-{u,g,r,i,z}-RRRRRR-C-FFFF.fits.bz2`
(data model: data.sdss.org/datamodel/files/BOSS_PHOTOOBJ/frames/RERUN/RUN/CAMCOL/frame.html).
HDU0 is the sky-subtracted image in nanomaggies with a TAN WCS, HDU1 the calibration vector
(nanomaggies per count, one value per column), HDU2 the sky model (a coarse grid `ALLSKY`, in
counts, with the fractional grid coordinates `XINTERP`/`YINTERP` of every full-size column/row),
HDU3 the asTrans astrometry.

Noise (data model recipe): counts = image / calib + sky; var_counts = counts / gain + dark_variance;
sigma_nmgy = calib * sqrt(var_counts). Gain and dark variance are per camcol and band, from the
tables on the data-model page above (transcribed here; the same values are in astrobject's
`instruments/sdss.py`, which cites that page); a few entries change with run number.

Conventions (all positions are 0-based, the centre of the first pixel is (0, 0), as in numpy,
SEP and astropy's `*_values` WCS calls; x is the column, y the row):
- Cutouts live on the r-band pixel grid. Cutout pixel (row i, column j) samples the r-grid point
  (x0 + j - c, y0 + i - c) for an object at r-pixel (x0, y0), c = `centre`. Default c = 32
  (`stargal_jax.CUTOUT_CENTRE`): it reproduces `frame[y-32:y+32, x-32:x+32]` for integer positions, the
  convention of the whole project (simulator, morphology). c = 31.5 puts the object between pixels. Array layout
  (N, 5, 64, 64), bands u, g, r, i, z.
- Every band is resampled per cutout: r-grid pixel centres -> r WCS -> sky -> band WCS -> band pixel
  coordinates (plus the band's measured alignment offset, below), then cubic B-spline interpolation
  (`scipy.ndimage.map_coordinates`, order 3) on a padded window, which equals interpolating the
  whole frame to ~1e-7. Pixels whose centre falls outside a band's frame are NaN.
- Alignment offsets: the frames' WCS (and asTrans) relative astrometry is off by up to ~1 pixel in
  some fields (measured: 005405-6-0099, i band +0.87, -0.59 px relative to r; g +0.38, -0.50).
  `load_field` therefore matches bright r-band sources to sources detected on each native band frame
  and adds the median residual (a constant per-band shift, in band pixels) to the WCS mapping.
- Noise cutouts: the native per-pixel sigma at each sampled position (the variance map is
  interpolated linearly, then square-rooted). Interpolated image pixels have slightly lower,
  correlated noise; the map states the per-pixel noise of the data they come from.

Modules: `frames` (one frame file, noise, the gain tables), `detect` (SEP on a frame), `field` (five frames
aligned, detection), `cutouts` (resampled cutouts, figure), `cli` (the command, also `python -m
stargal_jax.sdss_frames`). The public functions are re-exported here.
"""

from stargal_jax.sdss_frames.cli import LABEL_COLUMNS, central_aperture_flux, main, read_positions_csv
from stargal_jax.sdss_frames.cutouts import cut_cutouts, cutout_offsets, plot_cutouts, resample
from stargal_jax.sdss_frames.detect import detect_frame_sources
from stargal_jax.sdss_frames.field import (Field, detect_sources, find_frame_files, load_field, measure_band_offsets,
                                           native_positions, r_pixels_to_sky, r_to_band_pixels, sky_to_r_pixels)
from stargal_jax.sdss_frames.frames import (APERTURE_RADIUS, COORD_KINDS, CUTOUT_SIZE, DETECT_MINAREA, DETECT_SNR,
                                            DETECT_THRESH_SIGMA, REFERENCE_BAND, SATURATION_COUNTS, SDSS_DARK_VARIANCE,
                                            SDSS_GAIN, SOURCE_DTYPE, WINDOW_SIGMA, Frame, FrameError, noise_map,
                                            read_frame, sdss_dark_variance, sdss_gain, sky_image)

__all__ = ["APERTURE_RADIUS", "COORD_KINDS", "CUTOUT_SIZE", "DETECT_MINAREA", "DETECT_SNR", "DETECT_THRESH_SIGMA",
           "LABEL_COLUMNS", "REFERENCE_BAND", "SATURATION_COUNTS", "SDSS_DARK_VARIANCE", "SDSS_GAIN", "SOURCE_DTYPE",
           "WINDOW_SIGMA", "Field", "Frame", "FrameError", "central_aperture_flux", "cut_cutouts", "cutout_offsets",
           "detect_frame_sources", "detect_sources", "find_frame_files", "load_field", "main", "measure_band_offsets",
           "native_positions", "noise_map", "plot_cutouts", "r_pixels_to_sky", "r_to_band_pixels", "read_frame",
           "read_positions_csv", "resample", "sdss_dark_variance", "sdss_gain", "sky_image", "sky_to_r_pixels"]
