"""sdss_frames.detect on a real field: detection cuts and aperture S/N against SEP called here."""

import numpy as np

from stargal_jax import sdss_frames as sf


def test_detection_cuts_and_signal_to_noise(sparse):
  sources = sf.detect_sources(sparse, snr=10.0, edge=40)
  height, width = sparse.reference.shape
  assert len(sources) > 50 and np.all(sources["snr"] >= 10.0)
  assert np.all((sources["x"] >= 40) & (sources["x"] <= width - 41))
  assert np.all((sources["y"] >= 40) & (sources["y"] <= height - 41))
  assert not sources["saturated"].any()
  everything = sf.detect_sources(sparse, snr=10.0, edge=40, exclude_flagged=False)
  assert everything["saturated"].any() and len(everything) > len(sources)
  # S/N recomputed by hand: noise-map errors summed over pixels whose centre is within 5 px.
  yy, xx = np.mgrid[:height, :width]
  for s in sources[:5]:
    inside = (xx - s["x"]) ** 2 + (yy - s["y"]) ** 2 <= sf.APERTURE_RADIUS ** 2
    fluxerr = np.sqrt(np.sum(sparse.reference.noise[inside].astype(np.float64) ** 2))
    assert abs(s["fluxerr"] / fluxerr - 1) < 0.05
