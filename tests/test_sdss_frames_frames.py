"""sdss_frames.frames on a real field: gain tables, the sky model against an independent bilinear
interpolation, the noise map against the background scatter. Skips cleanly when ../shared/data is absent."""

import bz2
import io

import numpy as np
import pytest
import sep
from astropy.io import fits
from scipy import interpolate, ndimage

from stargal_jax import sdss_frames as sf
from sdss_helpers import SPARSE


def test_gain_and_dark_variance_tables():
  assert sf.sdss_gain(6, "r", 1035) == 4.895
  assert sf.sdss_gain(2, "u", 1000) == 1.595 and sf.sdss_gain(2, "u", 2583) == 1.825
  assert sf.sdss_dark_variance(4, "z", 1035) == 9.61 and sf.sdss_dark_variance(4, "z", 5405) == 12.6025
  with pytest.raises(KeyError, match=r"camcol 7; valid: \[1, 2"):
    sf.sdss_gain(7, "r", 1035)
  with pytest.raises(KeyError, match=r"band 'y'; valid"):
    sf.sdss_dark_variance(1, "y", 1035)


def test_sky_model_matches_independent_bilinear_interpolation(sparse, sdss_frames_dir):
  frame = sparse.frames["u"]
  raw = bz2.decompress((sdss_frames_dir / SPARSE / f"frame-u-{SPARSE}.fits.bz2").read_bytes())
  with fits.open(io.BytesIO(raw)) as hdul:
    table = hdul[2].data
  allsky, xinterp, yinterp = table["ALLSKY"][0], table["XINTERP"][0], table["YINTERP"][0]
  grid = interpolate.RegularGridInterpolator((np.arange(allsky.shape[0]), np.arange(allsky.shape[1])),
                                             allsky.astype(np.float64), method="linear")
  rng = np.random.default_rng(0)
  rows, cols = rng.integers(0, frame.shape[0], 2000), rng.integers(0, frame.shape[1], 2000)
  rows[:2], cols[:2] = (0, frame.shape[0] - 1), (0, frame.shape[1] - 1)  # clamped corners
  points = np.stack([np.clip(yinterp[rows], 0, allsky.shape[0] - 1),
                     np.clip(xinterp[cols], 0, allsky.shape[1] - 1)], axis=1)
  np.testing.assert_allclose(frame.sky[rows, cols], grid(points), rtol=1e-5)
  # The recovered raw frame is the sky (tens of counts in u) plus sources: its median is the sky's.
  assert abs(np.median(frame.counts) / np.median(frame.sky) - 1) < 0.05


def test_noise_map_matches_background_scatter(sparse):
  """Median noise-map sigma vs the robust std of source-free pixels, per band, within 15%."""
  for band, frame in sparse.frames.items():
    data = np.ascontiguousarray(frame.image, np.float64)
    background = sep.Background(data)
    _, segmentation = sep.extract(data - background.back(), 1.5, err=background.globalrms, minarea=3,
                                  segmentation_map=True)
    free = ~ndimage.binary_dilation(segmentation > 0, iterations=4)
    pixels = data[free]
    robust_std = 1.4826 * np.median(np.abs(pixels - np.median(pixels)))
    ratio = np.median(frame.noise[free]) / robust_std
    assert abs(ratio - 1) < 0.15, f"{band}: noise map / measured background scatter = {ratio:.3f}"


# ---------------------------------------------------------------------------------------------
# issue 14 (Why 3): frame files are checked as they are read; every unreadable one is named.

import shutil  # noqa: E402

from sdss_helpers import synthetic_frame_hdus, write_synthetic_frame  # noqa: E402


def test_a_synthetic_frame_reads_with_its_wcs(tmp_path):
  frame = sf.read_frame(write_synthetic_frame(tmp_path, "g"))
  assert (frame.band, frame.run, frame.camcol, frame.field) == ("g", 1035, 6, 17)
  ra, dec = frame.wcs.pixel_to_world_values(100.0, 80.0)  # the reference pixel (FITS 1-based CRPIX 101, 81)
  assert (float(ra), float(dec)) == pytest.approx((10.0, 1.0), abs=1e-9)


def _damaged_header(**changes):
  hdus = synthetic_frame_hdus("g")
  for key, value in changes.items():
    if value is None:
      del hdus[0].header[key]
    else:
      hdus[0].header[key] = value
  return hdus


@pytest.mark.parametrize("changes, expected", [
    (dict(CTYPE1=None, CTYPE2=None, CRVAL1=None, CRVAL2=None, CRPIX1=None, CRPIX2=None, CD1_1=None, CD1_2=None,
          CD2_1=None, CD2_2=None), "no usable WCS: the header lacks CTYPE1, CTYPE2, CRVAL1"),
    (dict(CD1_1=None), "no usable WCS: the header lacks CD1_1..CD2_2"),
    (dict(CD1_1=0.0, CD2_2=0.0), "invalid WCS .*singular"),
    (dict(FILTER=None), "header lacks FILTER"),
    (dict(CAMCOL=9), "CAMCOL=9"),
    (dict(FILTER="y"), "FILTER='y'"),
], ids=["no_wcs", "no_cd_matrix", "singular_cd", "no_filter", "camcol_9", "band_y"])
def test_a_frame_with_missing_or_bad_headers_is_refused_naming_the_file(tmp_path, changes, expected):
  """Before: a frame without WCS got astropy's identity WCS (RA/Dec degrees taken as pixels) and gave flat cutouts."""
  path = write_synthetic_frame(tmp_path, "g", hdus=_damaged_header(**changes))
  with pytest.raises(sf.FrameError, match=expected) as error:
    sf.read_frame(path)
  assert str(path) in str(error.value) and "\n" not in str(error.value)


def _truncated_bz2(path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path):
  path.write_bytes(np.random.default_rng(0).bytes(5000))


def _truncated_fits_inside(path):
  raw = bz2.decompress(path.read_bytes())
  path.write_bytes(bz2.compress(raw[: len(raw) // 2]))


def _one_hdu(path):
  raw = io.BytesIO()
  fits.HDUList([synthetic_frame_hdus("g")[0]]).writeto(raw)
  path.write_bytes(bz2.compress(raw.getvalue()))


@pytest.mark.parametrize("damage, expected", [
    (_truncated_bz2, "not a readable bzip2"), (_garbage, "not a readable bzip2"),
    (_truncated_fits_inside, "not a readable FITS frame"), (_one_hdu, "1 HDU")],
    ids=["truncated_bz2", "garbage", "truncated_fits", "one_hdu"])
def test_an_unreadable_frame_file_is_named_on_one_line(tmp_path, damage, expected):
  path = write_synthetic_frame(tmp_path, "g")
  damage(path)
  with pytest.raises(sf.FrameError, match=expected) as error:
    sf.read_frame(path)
  assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_a_real_frame_stripped_of_its_wcs_is_refused(sdss_frames_dir, tmp_path):
  source = sdss_frames_dir / SPARSE / f"frame-g-{SPARSE}.fits.bz2"
  with fits.open(io.BytesIO(bz2.decompress(source.read_bytes()))) as hdul:
    for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
      del hdul[0].header[key]
    raw = io.BytesIO()
    hdul.writeto(raw)
  damaged = tmp_path / source.name.replace(".bz2", "")  # read_frame reads plain .fits too (no slow recompression)
  damaged.write_bytes(raw.getvalue())
  with pytest.raises(sf.FrameError, match=f"{damaged}: no usable WCS"):
    sf.read_frame(damaged)
  shutil.rmtree(tmp_path)
