"""sdss_frames.field on the crowded field (005405-6-0099), whose frames' WCS is off by up to ~1 pixel between
bands: the measured alignment holds on held-out sources found on each band's own pixels."""

import numpy as np
import pytest

from stargal_jax import sdss_frames as sf
from sdss_helpers import check_centred, isolated_point_sources, median_residual, native_positions_by_hand


@pytest.mark.slow  # loads a second real field for this test alone (~12 s)
def test_alignment_on_held_out_sources(crowded):
  stars = sf.detect_sources(crowded, snr=20.0)
  fit, held_out = stars[::2], stars[1::2]
  native = {band: native_positions_by_hand(frame) for band, frame in crowded.frames.items() if band != "r"}
  offsets, n_matched = sf.measure_band_offsets(crowded.frames, fit["x"], fit["y"], native=native)
  aligned = sf.Field(crowded.name, crowded.frames, offsets, n_matched)
  for band in native:
    predicted = np.stack(sf.r_to_band_pixels(aligned, band, held_out["x"], held_out["y"]), axis=1)
    corrected, n = median_residual(predicted, native[band])
    assert n >= 50, band
    assert np.all(np.abs(corrected) < 0.1), f"{band}: held-out residual {corrected} px"
  # Why the offsets exist: the frames' own WCS puts i-band sources ~0.9 px off in this field.
  wcs_only = np.stack(sf.r_to_band_pixels(crowded, "i", held_out["x"], held_out["y"]), axis=1)
  raw, _ = median_residual(wcs_only, native["i"])
  assert np.hypot(*raw) > 0.5
  # And the held-out stars come out centred in the bands bright enough to measure here.
  isolated = isolated_point_sources(aligned, held_out)
  images, noise, _ = sf.cut_cutouts(aligned, np.c_[isolated["x"], isolated["y"]])
  check_centred(images, noise, ("g", "r", "i", "z"), min_stars=10)


# ---------------------------------------------------------------------------------------------
# issue 14 (Why 3): a band whose alignment matches no source is an error; a band with few matches is flagged.

from sdss_helpers import SYNTHETIC_STARS, write_synthetic_frame  # noqa: E402


def _synthetic_field(folder, **per_band):
  """Five synthetic frames of one field, all bands seeing the same 24 stars through the same WCS, except where
  `per_band[band]` gives other arguments of `synthetic_frame_hdus`."""
  for i, band in enumerate("ugriz"):
    write_synthetic_frame(folder, band, seed=i, **per_band.get(band, {}))
  return folder


def test_a_synthetic_field_aligns_every_band_from_its_sources(tmp_path):
  field = sf.load_field(_synthetic_field(tmp_path))
  assert field.alignment == {"u": "measured from 24 sources", "g": "measured from 24 sources", "r": "reference",
                             "i": "measured from 24 sources", "z": "measured from 24 sources"}
  for band in "ugiz":  # the same WCS and the same stars: no offset to within the centroid noise
    assert np.hypot(*field.offsets[band]) < 0.05


def test_a_band_whose_wcs_matches_no_source_is_an_error_naming_its_file(tmp_path):
  """Before: the band kept offset (0, 0) with n_matched 0, nothing flagged, and its cutouts missed the objects."""
  _synthetic_field(tmp_path, g=dict(crpix_shift=(20.0, -15.0)))
  with pytest.raises(sf.FrameError, match=r"frame-g-001035-6-0017\.fits\.bz2: none of the 24 bright r-band sources"):
    sf.load_field(tmp_path)
  assert sf.load_field(tmp_path, refine_alignment=False).alignment["g"].startswith("WCS only")  # on purpose


def test_a_band_with_few_matches_keeps_its_wcs_flagged(tmp_path):
  field = sf.load_field(_synthetic_field(tmp_path, u=dict(stars=SYNTHETIC_STARS[:4])))
  assert field.alignment["u"] == "WCS only: 4 sources matched, fewer than 10"
  assert field.offsets["u"] == (0.0, 0.0) and field.n_matched["u"] == 0
