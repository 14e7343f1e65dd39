"""segment.deblend: GalSim Gaussians at known separations split into the right number of components with the
right flux split; one source (round or an elongated Sersic galaxy) is never split."""

import galsim
import numpy as np
import pytest

from stargal_jax.segment import deblend

SIZE = 64
NOISE = 1.0


def draw(profile, x: float, y: float) -> np.ndarray:
  """A GalSim profile drawn on a 64 x 64 grid of unit pixels, centred at array position (x, y)."""
  image = galsim.ImageD(SIZE, SIZE, scale=1.0)
  offset = galsim.PositionD(x - (SIZE - 1) / 2, y - (SIZE - 1) / 2)
  return profile.drawImage(image=image, offset=offset, method="no_pixel").array


def deblended(snr: np.ndarray, threshold: float = 2.0, **options) -> np.ndarray:
  segments = (snr > threshold).astype(np.int32)
  return deblend.deblend_segments(segments, snr, deblend.DeblendOptions(**options))


@pytest.mark.parametrize("ratio", [1.0, 0.4])
def test_two_gaussians_four_sigma_apart_split_with_their_fluxes(ratio):
  sigma, flux_a = 2.0, 3000.0
  a = draw(galsim.Gaussian(sigma=sigma, flux=flux_a), 28.0, 31.5)
  b = draw(galsim.Gaussian(sigma=sigma, flux=ratio * flux_a), 36.0, 31.5)
  rng = np.random.default_rng(0)
  snr = (a + b) / NOISE + rng.normal(0.0, 0.05, (SIZE, SIZE))
  parts = deblended(snr)
  assert parts.max() == 2
  part_a = parts[28 if parts[31, 28] else 31, 28]  # the part holding A's centre
  flux = {lab: (a + b)[parts == lab].sum() for lab in (1, 2)}
  # Each part holds its own source's flux (inside the segment) to within the cross-talk of the two profiles
  # beyond the saddle (~2 sigma from each centre: a few per cent).
  inside = parts > 0
  assert flux[part_a] == pytest.approx(a[inside].sum(), rel=0.04)
  assert flux[3 - part_a] == pytest.approx(b[inside].sum(), rel=0.06)


def test_two_equal_gaussians_are_split_only_when_there_is_a_saddle():
  """Two equal Gaussians of width s have a saddle (two peaks) iff their separation exceeds 2 s."""
  sigma, flux = 2.0, 4000.0
  for separation, expected in ((1.8 * sigma, 1), (3.0 * sigma, 2)):
    image = (draw(galsim.Gaussian(sigma=sigma, flux=flux), 31.5 - separation / 2, 31.5)
             + draw(galsim.Gaussian(sigma=sigma, flux=flux), 31.5 + separation / 2, 31.5))
    assert deblended(image / NOISE).max() == expected, separation


def test_one_source_is_not_split_even_with_noise():
  rng = np.random.default_rng(3)
  round_star = draw(galsim.Gaussian(sigma=1.5, flux=2000.0), 31.5, 31.5)
  galaxy = draw(galsim.Sersic(n=1.5, half_light_radius=5.0, flux=8000.0).shear(e1=0.5, e2=0.2), 31.5, 31.5)
  for image in (round_star, galaxy):
    noisy = image + rng.normal(0.0, 0.3, image.shape)  # the smoothed S/N map's noise: well below 1 sigma
    assert deblended(noisy).max() == 1


def test_contrast_one_never_splits_and_the_outer_shape_is_kept():
  sigma = 2.0
  image = (draw(galsim.Gaussian(sigma=sigma, flux=3000.0), 26.0, 31.5)
           + draw(galsim.Gaussian(sigma=sigma, flux=3000.0), 37.0, 31.5))
  assert deblended(image, contrast=1.0).max() == 1
  parts = deblended(image)
  np.testing.assert_array_equal(parts > 0, image > 2.0)  # every pixel of the segment goes to a part
  # A faint branch below the contrast stays with its host: 1% of the flux at contrast 0.05.
  faint = draw(galsim.Gaussian(sigma=sigma, flux=3000.0), 26.0, 31.5) + draw(galsim.Gaussian(sigma=sigma, flux=30.0),
                                                                             34.0, 31.5)
  assert deblended(faint, threshold=0.5, contrast=0.05).max() == 1


def test_levels_are_exponential_between_low_and_peak():
  t = deblend.levels(1.0, 100.0, 3)
  np.testing.assert_allclose(t, [100 ** 0.25, 100 ** 0.5, 100 ** 0.75])
  np.testing.assert_allclose(deblend.levels(-1.0, 3.0, 3), [0.0, 1.0, 2.0])
