"""Tests for stargal_jax.simulate against independent computations (GalSim drawing and transforms, closed
forms, the cardinal cubic spline, binomial and Poisson statistics) and for the exact on-disk formats,
determinism, worker independence, truth and the command line."""

import dataclasses
import filecmp
import json
from pathlib import Path

import galsim
import numpy as np
import pytest
from astropy.cosmology import Planck18
from scipy import integrate, optimize

from stargal_jax.data.formats import CLASS_CODES, LABELLED_DTYPE, UNLABELLED_DTYPE
from stargal_jax.simulate import SimParams, dataset, observed, populations as pop, render, simulate_cutouts, simulate_dataset
from stargal_jax.simulate import __main__ as cli
from stargal_jax.simulate import params as P


def fixed_conditions(fwhm=1.2, g1=0.0, g2=0.0, wing=P.PSF_WING_FRACTION, noise_scale=1.0) -> pop.Conditions:
  sky_nmgy = 10.0 ** (-0.4 * (np.array(P.SKY_MAG_ARCSEC2) - 22.5)) * P.PIXEL_SCALE_ARCSEC ** 2
  return pop.Conditions(camcol=3, psf_fwhm_arcsec=fwhm * np.array(P.SEEING_RATIO_TO_R),
                        psf_g1=np.full(5, g1), psf_g2=np.full(5, g2), sky_dn=sky_nmgy / np.array(P.NMGY_PER_DN),
                        nmgy_per_dn=np.array(P.NMGY_PER_DN), gain=P.GAIN_E_PER_DN[2].copy(),
                        dark_variance=P.DARK_VARIANCE_DN2[2].copy(), noise_scale=np.full(5, noise_scale),
                        psf_wing_fraction=wing)


def galsim_reference(source: pop.Source, conditions: pop.Conditions, band: int, size: int = render.NATIVE) -> np.ndarray:
  """GalSim's own drawImage of the same source (pixel response included); pixel (i, j) centred at (j, i)."""
  psf = render.psf_profile(conditions, band)
  flux = source.flux_nmgy()[band]
  if source.is_point:
    profile = galsim.DeltaFunction(flux=flux)
  else:
    bulge, disk = render.galaxy_profiles(source)
    profile = flux * source.bulge_fraction[band] * bulge + flux * (1 - source.bulge_fraction[band]) * disk
  centre = (size - 1) / 2
  return galsim.Convolve(profile, psf).drawImage(
    nx=size, ny=size, scale=P.PIXEL_SCALE_ARCSEC, offset=(source.x - centre, source.y - centre)).array


def test_renderer_matches_galsim_draw_image():
  rng = np.random.default_rng(0)
  conditions = fixed_conditions(fwhm=1.1, g1=0.03, g2=-0.02)
  galaxy = pop.make_galaxy(rng, 17.0, 40.3, 39.8)
  star = pop.make_star(rng, 18.0, 20.4, 58.7)
  scene = render.render_scene([galaxy, star], conditions, span=96)
  for b in range(5):
    reference = galsim_reference(galaxy, conditions, b) + galsim_reference(star, conditions, b)
    assert np.abs(scene.bands[b] - reference).max() < 2e-4 * reference.max()
  assert np.allclose(scene.central_r, galsim_reference(galaxy, conditions, 2), atol=2e-4 * scene.central_r.max())
  gri_star = sum(galsim_reference(star, conditions, b) for b in (1, 2, 3))
  assert np.allclose(scene.objects_gri[1], gri_star, atol=2e-4 * gri_star.max())


def test_chosen_fourier_span_keeps_accuracy_in_good_seeing():
  conditions = fixed_conditions(fwhm=0.8)
  span = render.fourier_span(conditions.psf_fwhm_arcsec)
  star = pop.Source(kind="STAR", x=40.2, y=39.6, mag=np.full(5, 17.0), z=0.0)
  image = render.render_scene([star], conditions, span=span).bands[3]
  reference = galsim_reference(star, conditions, 3)
  assert span == 96 or np.abs(image - reference).max() < 2e-3 * reference.max()
  assert render.fourier_span(np.full(5, 1.4)) == 64  # typical seeing needs only the Nyquist band


def test_profile_transforms_match_galsim():
  k = np.geomspace(0.05, 20.0, 40)
  for hlr in (0.2, 1.3):
    dev = galsim.DeVaucouleurs(half_light_radius=hlr)
    exp = galsim.Exponential(half_light_radius=hlr)
    assert np.allclose(render.devaucouleurs_transform(k, hlr), [dev.kValue(galsim.PositionD(v, 0)).real for v in k],
                       atol=2e-5)
    assert np.allclose(render.exponential_transform(k, hlr), [exp.kValue(galsim.PositionD(v, 0)).real for v in k],
                       atol=1e-10)
  moffat = galsim.Moffat(beta=1.8, fwhm=1.2)
  assert np.allclose(render.moffat_transform(k, 1.8, 1.2), [moffat.kValue(galsim.PositionD(v, 0)).real for v in k],
                     atol=1e-10)
  expected = render.kimage(galsim.Kolmogorov(fwhm=0.9).shear(g1=0.04, g2=0.03), span=64)
  assert np.abs(render.kolmogorov_kimage(0.9, 0.04, 0.03, span=64) - expected).max() < 1e-10


def radial_profile(image: np.ndarray, x: float, y: float, edges: np.ndarray) -> np.ndarray:
  yy, xx = np.indices(image.shape)
  r = np.hypot(xx - x, yy - y)
  return np.array([image[(r >= a) & (r < b)].mean() for a, b in zip(edges[:-1], edges[1:])])


def test_psf_wings_follow_the_moffat_power_law():
  """Far from the core (>= 12 px, ~15 core FWHMs) the star's profile is the core's own tail plus f x the
  Moffat's closed form (each profile's tail times the other's unit flux), the Moffat averaged over each
  annulus through its enclosed flux 1 - (1 + R^2 / a^2)^(1 - beta)."""
  conditions = fixed_conditions(fwhm=0.8, wing=0.15)
  star = pop.Source(kind="STAR", x=40.0, y=40.0, mag=np.full(5, 15.0), z=0.0)
  flux = star.flux_nmgy()[2]
  with_wings = render.render_scene([star], conditions, mask_sources=[]).bands[2] / flux
  core_only = render.render_scene([star], conditions, wings=False, mask_sources=[]).bands[2] / flux
  edges = np.array([12.0, 15.0, 18.0, 22.0])
  beta, fwhm = P.PSF_WING_BETA, P.PSF_WING_FWHM_ARCSEC
  a = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1)) / P.PIXEL_SCALE_ARCSEC  # pixels
  enclosed = 1 - (1 + (edges / a) ** 2) ** (1 - beta)
  moffat = np.diff(enclosed) / (np.pi * np.diff(edges ** 2))  # mean per pixel in each annulus
  wings = radial_profile(with_wings, 40, 40, edges)
  core = radial_profile(core_only, 40, 40, edges)
  assert np.allclose(wings, core + 0.15 * moffat, rtol=0.08)  # less the core x wing convolution term (~r^-2)
  assert np.all(wings > 2.5 * core)


def test_sky_noise_matches_configured_sigma():
  conditions = fixed_conditions(noise_scale=1.05)
  # Independent of the code: sigma = scale NMGY sqrt(sky/gain + dark variance), sky in DN.
  sky_nmgy = 10.0 ** (-0.4 * (np.array(P.SKY_MAG_ARCSEC2) - 22.5)) * P.PIXEL_SCALE_ARCSEC ** 2
  expected = 1.05 * np.array(P.NMGY_PER_DN) * np.sqrt(sky_nmgy / np.array(P.NMGY_PER_DN) / P.GAIN_E_PER_DN[2]
                                                      + P.DARK_VARIANCE_DN2[2])
  image, saturated = render.observe(np.zeros((5, 80, 80)), conditions, np.random.default_rng(1))
  std = image.reshape(5, -1).std(axis=1)
  assert not saturated
  assert np.allclose(std, expected, rtol=0.03)  # 6400 px: 0.9% standard error
  assert np.allclose(conditions.sky_sigma_nmgy(), expected)


def cardinal_cubic_spline(x: np.ndarray) -> np.ndarray:
  """The interpolating cubic B-spline kernel: sum_k c_k beta3(x - k), c_k = sqrt(3) (sqrt(3) - 2)^|k|."""
  def beta3(t):
    t = np.abs(t)
    return np.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
  k = np.arange(-30, 31)
  c = np.sqrt(3) * (np.sqrt(3) - 2) ** np.abs(k)
  return np.sum(c[None, :] * beta3(np.asarray(x, dtype=np.float64)[:, None] - k[None, :]), axis=1)


def test_resampled_noise_correlation_matches_the_spline_kernel():
  rng = np.random.default_rng(2)
  shift = 0.4
  m = np.arange(-20, 21)
  weights = cardinal_cubic_spline(shift - m)  # output pixel j = sum_n noise[j + n] eta(shift - n)
  assert weights.sum() == pytest.approx(1.0, abs=1e-6) and weights[20] < 1
  variance = np.sum(weights ** 2)
  lag1 = np.sum(weights[1:] * weights[:-1]) / variance
  values, neighbours = [], []
  for _ in range(40):
    noise = rng.normal(0, 1, (1, 80, 80))
    cut = render.resample_to_cutout(noise, 40.0 + shift, 40.0)[0]  # x shifted, y on the grid
    values.append(cut[:, 8:-8].var())
    neighbours.append(np.mean(cut[:, 8:-9] * cut[:, 9:-8]) / cut[:, 8:-8].var())
  assert np.mean(values) == pytest.approx(variance, rel=0.02)
  assert np.mean(neighbours) == pytest.approx(lag1, abs=0.01)


def test_detection_snr_is_the_aperture_snr():
  """A bright isolated star in sky noise: detection S/N = aperture flux / sqrt(sum of pixel variances)."""
  conditions = fixed_conditions()
  star = pop.Source(kind="STAR", x=40.3, y=40.6, mag=np.full(5, 19.0), z=0.0)
  noiseless = render.render_scene([star], conditions, mask_sources=[]).bands
  yy, xx = np.indices((80, 80))
  inside = np.hypot(xx - 40.3, yy - 40.6) <= 5.0
  variance = conditions.sky_sigma_nmgy()[2] ** 2 + noiseless[2] * conditions.nmgy_per_dn[2] / conditions.gain[2]
  expected = noiseless[2][inside].sum() / np.sqrt(variance[inside].sum())
  measured = []
  for seed in range(20):
    image, _ = render.observe(noiseless, conditions, np.random.default_rng(seed))
    found = render.detect_central(image[2], conditions, (star.x, star.y))
    assert found.detected and abs(found.x - star.x) < 0.3 and abs(found.y - star.y) < 0.3
    measured.append(found.snr)
  assert np.mean(measured) == pytest.approx(expected, rel=0.05)  # pixelised aperture vs exact circle


def test_point_fraction_matches_prior_binomially():
  params = SimParams(point_fraction=0.3)
  rng = np.random.default_rng(2)
  n = 20000
  kinds = [pop.sample_kind(rng, params) for _ in range(n)]
  point = np.mean([k != "GALAXY" for k in kinds])
  assert abs(point - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)
  qso = np.mean([k == "QSO" for k in kinds]) / point
  q = params.qso_fraction_of_point
  assert abs(qso - q) < 4 * np.sqrt(q * (1 - q) / (n * point))


def test_counts_slope_recovered_from_a_large_draw():
  rng = np.random.default_rng(3)
  lo, hi = 20.5, 23.0  # above the break: slope GALAXY_SLOPE_FAINT
  m = pop.sample_counts_magnitude(rng, "GALAXY", lo, hi, size=40000)
  # Maximum likelihood slope of a truncated exponential in m (dN/dm ~ 10^(s m)), solved independently.
  def score(s):
    a = s * np.log(10)
    mean_model = hi - 1 / a + (hi - lo) / np.expm1(a * (hi - lo))
    return mean_model - m.mean()
  slope = optimize.brentq(score, 0.01, 2.0)
  assert slope == pytest.approx(P.GALAXY_SLOPE_FAINT, abs=0.015)
  # Across the break the share below it follows the integral of the broken power law.
  both = pop.sample_counts_magnitude(rng, "GALAXY", 18.0, 22.0, size=40000)
  below = integrate.quad(pop.galaxy_density, 18.0, P.GALAXY_SLOPE_BREAK)[0]
  share = below / integrate.quad(pop.galaxy_density, 18.0, 22.0, points=[P.GALAXY_SLOPE_BREAK])[0]
  assert np.mean(both < P.GALAXY_SLOPE_BREAK) == pytest.approx(share, abs=4 * np.sqrt(share * (1 - share) / 40000))


def test_neighbour_counts_are_poisson_with_the_field_density():
  params = SimParams()
  rng = np.random.default_rng(4)
  counts = np.array([len(pop.sample_neighbours(rng, params, (40.0, 40.0))) for _ in range(3000)])
  area = (64 + 2 * params.neighbour_margin_px) ** 2 * (P.PIXEL_SCALE_ARCSEC / 3600) ** 2
  density = integrate.quad(lambda r: pop.galaxy_density(r) + pop.star_density(r), params.neighbour_bright_mag,
                           params.neighbour_faint_mag, points=[P.GALAXY_SLOPE_BREAK])[0]
  # The exclusion disc removes a negligible area (pi 3^2 of 96^2 px^2: 0.3%).
  expected = density * area * (1 - np.pi * params.min_neighbour_distance_px ** 2 / (64 + 2 * params.neighbour_margin_px) ** 2)
  assert counts.mean() == pytest.approx(expected, abs=4 * np.sqrt(expected / len(counts)))
  assert counts.var() == pytest.approx(expected, rel=0.15)
  none = [pop.sample_neighbours(rng, params.replace(neighbour_density_scale=0.0), (40.0, 40.0)) for _ in range(20)]
  assert all(n == [] for n in none)


def test_star_density_scale_sets_the_neighbour_star_share():
  params = SimParams(star_density_scale=3.0)
  rng = np.random.default_rng(11)
  neighbours = [n for _ in range(1500) for n in pop.sample_neighbours(rng, params, (40.0, 40.0))]
  lo, hi = params.neighbour_bright_mag, params.neighbour_faint_mag
  stars = 3.0 * integrate.quad(pop.star_density, lo, hi)[0]
  galaxies = integrate.quad(pop.galaxy_density, lo, hi, points=[P.GALAXY_SLOPE_BREAK])[0]
  share = stars / (stars + galaxies)
  observed = np.mean([n.kind == "STAR" for n in neighbours])
  assert observed == pytest.approx(share, abs=4 * np.sqrt(share * (1 - share) / len(neighbours)))


def test_m_dwarf_share_follows_its_table():
  rng = np.random.default_rng(5)
  for r in (16.0, 19.5, 21.0):
    colours = np.array([pop.star_colours(rng, r) for _ in range(4000)])
    share = pop.m_dwarf_share(r)
    # M0-M4 lie above g-r 1.15 (the M0 node less half the way to K5), the other types below it.
    assert np.mean(colours[:, 1] > 1.15) == pytest.approx(share, abs=4 * np.sqrt(share * (1 - share) / 4000) + 0.02)


def test_truncated_power_law_matches_its_cdf():
  rng = np.random.default_rng(4)
  m = np.array([pop.truncated_power_law(rng, 0.45, 19.0, 22.5) for _ in range(20000)])
  cdf_at_21 = (10 ** (0.45 * 2.0) - 1) / (10 ** (0.45 * 3.5) - 1)
  assert np.mean(m < 21.0) == pytest.approx(cdf_at_21, abs=4 * np.sqrt(cdf_at_21 * (1 - cdf_at_21) / m.size))


def test_stellar_locus_follows_juric_2008():
  ri = pop.STELLAR_LOCUS[:, 2]
  juric = 1.39 * (1 - np.exp(-4.9 * ri ** 3 - 2.45 * ri ** 2 - 1.68 * ri - 0.050))
  usable = ri < 0.7
  assert np.abs(pop.STELLAR_LOCUS[usable, 1] - juric[usable]).max() < 0.05


def test_galaxy_tracks_straddle_strateva_separator():
  def u_minus_r(track, z):
    return np.interp(z, pop.TRACK_Z, track[:, 0]) + np.interp(z, pop.TRACK_Z, track[:, 1])
  for z in (0.05, 0.1, 0.15):
    assert u_minus_r(pop.RED_TRACK, z) > 2.22 > u_minus_r(pop.BLUE_TRACK, z)


def sersic_enclosed_by_quadrature(radius: float, hlr: float, n: float) -> float:
  """Light fraction within radius by direct integration, b_n from Ciotti & Bertin (1999)."""
  b = 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n ** 2)
  profile = lambda r: 2 * np.pi * r * np.exp(-b * (r / hlr) ** (1 / n))  # noqa: E731
  inside = integrate.quad(profile, 0, radius, limit=200)[0]
  return inside / (inside + integrate.quad(profile, radius, np.inf, limit=200)[0])


def test_cosmology_and_composite_half_light_radius():
  for z in (0.02, 0.1, 0.5):
    assert pop.kpc_per_arcsec(z) == pytest.approx(Planck18.kpc_proper_per_arcmin(z).value / 60, rel=1e-3)
    assert pop.distance_modulus(z) == pytest.approx(Planck18.distmod(z).value, abs=1e-3)
  for bt, bulge, disk in [(0.0, 0.3, 1.0), (0.6, 0.35, 1.0), (1.0, 0.5, 2.0), (0.3, 0.2, 3.0)]:
    hlr = pop.composite_half_light(bt, bulge, disk)
    enclosed = bt * sersic_enclosed_by_quadrature(hlr, bulge, 4.0) + (1 - bt) * sersic_enclosed_by_quadrature(hlr, disk, 1.0)
    assert enclosed == pytest.approx(0.5, abs=1e-4)


def test_distant_galaxies_are_small_and_size_scale_knob_scales_them():
  rng = np.random.default_rng(6)
  bright = [pop.make_galaxy(rng, 17.0, 32, 32) for _ in range(300)]
  faint = [pop.make_galaxy(rng, 21.5, 32, 32) for _ in range(300)]
  assert np.median([g.z for g in bright]) == pytest.approx(pop.median_redshift(17.0), rel=0.15)
  assert np.median([g.z for g in faint]) > 3 * np.median([g.z for g in bright])
  assert np.median([g.r_half_arcsec for g in faint]) < 0.6 * np.median([g.r_half_arcsec for g in bright])
  for g in bright[:20]:  # total r is exactly the requested magnitude
    assert g.mag[2] == pytest.approx(17.0, abs=1e-9)
  one = pop.make_galaxy(np.random.default_rng(7), 20.0, 0, 0)
  doubled = pop.make_galaxy(np.random.default_rng(7), 20.0, 0, 0, SimParams(galaxy_size_scale=2.0))
  assert doubled.r_half_arcsec == pytest.approx(2 * one.r_half_arcsec, rel=1e-9)


def test_depth_knob_lowers_sky_noise_by_the_exposure():
  for depth in (1.0, -0.5):
    a = pop.sample_field(np.random.default_rng(8), SimParams())
    b = pop.sample_field(np.random.default_rng(8), SimParams(depth_mag=depth))
    t = 10 ** (0.8 * depth)
    # Independent: exposure t multiplies sky DN and DN per nanomaggy by t (the dark variance does not grow).
    expected = a.nmgy_per_dn / t * np.sqrt(a.sky_dn * t / a.gain + a.dark_variance) * a.noise_scale
    assert np.allclose(b.sky_sigma_nmgy(), expected, rtol=1e-12)
  assert pop.sample_field(np.random.default_rng(9), SimParams(seeing_r_median_arcsec=1.6, seeing_log_sigma=0.0)
                          ).psf_fwhm_arcsec[2] == pytest.approx(1.6, rel=0.25)


def test_faint_background_carries_its_flux():
  rng = np.random.default_rng(10)
  background = pop.sample_faint_background(rng, SimParams(), render.GRID)
  assert len(background.x) > 20
  kimage = render.faint_background_kimage(background, span=64)
  total = background.flux.sum(axis=0)
  assert np.allclose(kimage[:, 64, 64].real, total, rtol=1e-5)  # the k = 0 term is the flux


def test_psf_width_calibration_round_trips():
  for core in (1.0, 1.4):
    width = observed.measured_width_px(core)
    assert observed.core_fwhm_for_width(width) == pytest.approx(core, abs=5e-3)
  core, wing = observed.psf_for_field(*observed.star_measurements(1.2, 0.22))
  assert core == pytest.approx(1.2, abs=0.01) and wing == pytest.approx(0.22, abs=0.01)


def test_bleed_conserves_charge_and_runs_along_the_column():
  dn = np.full((64, 64), 100.0)
  dn[30:33, 20] = [20000.0, 30000.0, 20000.0]
  level = 4000.0
  out, hit = render.bleed_columns(dn, level)
  assert hit and out.max() <= level + 1e-9
  assert out.sum() == pytest.approx(dn.sum())
  assert np.array_equal(out[:, :20], dn[:, :20]) and np.array_equal(out[:, 21:], dn[:, 21:])
  excess = 16000 + 26000 + 16000  # half goes each way, filling pixels of room level - 100
  filled = int(np.sum(out[:, 20] >= level - 1e-9))
  assert filled == 3 + 2 * int(excess / 2 // (level - 100))
  assert np.flatnonzero(out[:, 20] > 100).tolist() == list(range(30 - 8, 33 + 8))


def test_segmentation_rule():
  objects = np.zeros((2, 64, 64))
  objects[0, 30:35, 30:35] = 5.0
  objects[1, 33:40, 33:40] = 3.0
  mask = render.segmentation_mask(objects, threshold=2.0)
  assert mask[31, 31] == 1 and mask[34, 34] == 1 and mask[38, 38] == 2 and mask[0, 0] == 0
  assert render.segmentation_mask(objects, threshold=4.0)[38, 38] == 0


def test_edge_defects_touch_the_border():
  rng = np.random.default_rng(7)
  for _ in range(20):
    mask = render.edge_defect_mask(rng)
    assert mask.any(axis=(1, 2)).all()
    border = mask[:, 0, :].any() or mask[:, -1, :].any() or mask[:, :, 0].any() or mask[:, :, -1].any()
    assert border and not mask[:, 32, 32].any()


def test_obj_id_bit_layout_and_uniqueness():
  ids = [dataset.make_obj_id(2017, i, camcol=1 + i % 6) for i in range(0, 200000, 997)]
  assert len(set(ids)) == len(ids)
  one = dataset.make_obj_id(2017, 123456, camcol=4)
  assert (one >> 29) & 0x7 == 4 and (one >> 48) & 0x7FF == 301 and (one >> 59) & 0xF == 2
  assert ((one >> 16) & 0x1FFF) * dataset.OBJECTS_PER_FIELD + (one & 0xFFFF) == 123456


def test_cli_sets_params_and_rejects_mistakes_in_one_line(tmp_path, capsys):
  params = cli.params_from_assignments(["seeing_r_median_arcsec=1.6", "resample_bands=false",
                                        "sky_residual_nmgy=0,0,0,0,0", "objects_per_field=50"])
  assert params == dataclasses.replace(SimParams(), seeing_r_median_arcsec=1.6, resample_bands=False,
                                       sky_residual_nmgy=(0.0,) * 5, objects_per_field=50)
  for bad, message in [("nonsense=1", "unknown SimParams field 'nonsense'"), ("point_fraction=2", "must be in [0, 1]"),
                       ("seeing_r_median_arcsec=wide", "expected a number"), ("noise_scale=1,1", "expected 5"),
                       ("depth_mag", "expected FIELD=VALUE")]:
    with pytest.raises(SystemExit) as exit_info:
      cli.main(["--out", str(tmp_path / "x"), "--n-labelled", "1", "--n-unlabelled", "0", "--param", bad])
    text = str(exit_info.value)
    assert message in text and "\n" not in text
  assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("sim")
  params = SimParams(objects_per_field=7)  # several fields in a tiny set
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(dataset, "CHUNK_OBJECTS", 6)  # several tasks, so the two workers really share them
    one = simulate_dataset(root / "w1", n_labelled=24, n_unlabelled=6, seed=11, workers=1, params=params)
    two = simulate_dataset(root / "w2", n_labelled=24, n_unlabelled=6, seed=11, workers=2, params=params)
  return one, two, params


def all_files(root: Path) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_generation_is_deterministic_and_worker_independent(tiny_dataset, tmp_path):
  one, two, params = tiny_dataset
  again = simulate_dataset(tmp_path / "again", n_labelled=24, n_unlabelled=6, seed=11, workers=1, params=params)
  assert all_files(one) == all_files(two) == all_files(again)
  for name in all_files(one):
    assert filecmp.cmp(one / name, two / name, shallow=False), name
    assert filecmp.cmp(one / name, again / name, shallow=False), name
  other = simulate_dataset(tmp_path / "other", n_labelled=24, n_unlabelled=6, seed=12, workers=1, params=params)
  assert not filecmp.cmp(one / "unlabelled" / "0000000.npy", other / "unlabelled" / "0000000.npy", shallow=False)
  assert not list(tmp_path.glob(".*tmp*"))


def test_files_have_exactly_the_study_formats(tiny_dataset):
  root, _, params = tiny_dataset
  labelled = sorted((root / "labelled").glob("*.npy"))
  records = [np.load(p, allow_pickle=False) for p in labelled]
  assert all(r.dtype == LABELLED_DTYPE and r.dtype.names == ("objID", "image", "class", "z") for r in records)
  assert all(1 <= len(r) <= params.max_records_per_file for r in records)
  stacked = np.concatenate(records)
  assert len(stacked) == 24 and len(np.unique(stacked["objID"])) == 24
  assert set(stacked["class"]) <= set(CLASS_CODES)
  assert stacked["image"].dtype == np.float32 and stacked["image"].shape[1:] == (5, 64, 64)
  unlabelled = sorted((root / "unlabelled").glob("*.npy"))
  assert len(unlabelled) == 6
  for p in unlabelled:
    r = np.load(p, allow_pickle=False)
    assert r.dtype == UNLABELLED_DTYPE and r.dtype.names == ("image",) and len(r) == 1
  manifest = json.loads((root / "manifest.json").read_text())
  assert manifest["n_labelled"] == 24 and manifest["version"] == P.SIM_VERSION
  assert SimParams.from_dict(manifest["params"]) == params

  with np.load(root / "truth" / "labelled_truth.npz", allow_pickle=False) as t:
    truth = {k: t[k] for k in t.files}
  assert list(truth["file"]) == [p.name for p, r in zip(labelled, records) for _ in range(len(r))]
  assert np.array_equal(truth["record"], np.concatenate([np.arange(len(r)) for r in records]))
  assert np.array_equal(truth["objID"], stacked["objID"])
  assert np.array_equal(truth["label"], [CLASS_CODES[c] for c in stacked["class"]])
  assert np.allclose(truth["z"], stacked["z"], rtol=1e-6, atol=1e-9)
  assert np.array_equal(truth["field"], np.arange(24) // 7)
  expected_dtypes = {"objID": np.int64, "record": np.int32, "mask": np.uint8, "label": np.int8, "z": np.float32,
                     "mag": np.float32, "r_half_arcsec": np.float32, "snr_r": np.float32, "detect_snr": np.float32,
                     "psf_fwhm_arcsec": np.float32, "n_neighbours": np.int16, "has_defect": bool, "field": np.int32,
                     "saturated": bool, "nb_object": np.int32, "nb_label": np.uint8, "nb_mag_r": np.float32,
                     "nb_x": np.float32, "nb_y": np.float32, "nb_is_point": bool}
  for key, dtype in expected_dtypes.items():
    assert truth[key].dtype == dtype, key
  assert truth["mask"].shape == (24, 64, 64) and truth["mag"].shape == (24, 5)
  assert np.all(truth["r_half_arcsec"][truth["label"] != CLASS_CODES["GALAXY"]] == 0)
  assert np.all(truth["detect_snr"] >= params.detect_snr)
  with np.load(root / "truth" / "unlabelled_truth.npz", allow_pickle=False) as u:
    assert np.all(u["objID"] == -1) and len(u["label"]) == 6


def test_cutouts_are_detected_centred_and_their_truth_is_consistent():
  params = SimParams(neighbour_density_scale=3.0, defect_fraction=0.0)
  cutouts = simulate_cutouts(20, seed=13, params=params)
  truth = dataset.truth_rows(cutouts, [-1] * 20, ["x"] * 20, [0] * 20)
  counts = np.bincount(truth["nb_object"], minlength=20)
  assert np.array_equal(counts, truth["n_neighbours"]) and counts.sum() > 10
  for row, cutout in enumerate(cutouts):
    labels = truth["nb_label"][truth["nb_object"] == row]
    assert np.array_equal(labels, np.arange(2, 2 + len(cutout.neighbours)))
    present = set(np.unique(truth["mask"][row])) - {0, 1}
    assert present <= set(labels.tolist())
    # The cutout is centred on the detection's windowed centroid: the matched detection lies within 2 px of the
    # truth and the windowed centroid moves at most 2 px more (blends pull it).
    assert np.hypot(cutout.central.x - 32, cutout.central.y - 32) < P.DETECT_MATCH_RADIUS_PX + 2.0
    assert cutout.detect_snr >= params.detect_snr
    for n in cutout.neighbours:
      inside = -0.5 <= n.x < 63.5 and -0.5 <= n.y < 63.5
      assert inside or (truth["mask"][row] == 2 + cutout.neighbours.index(n)).any()
      assert np.hypot(n.x - cutout.central.x, n.y - cutout.central.y) > params.min_neighbour_distance_px - 1e-6
  offsets = [np.hypot(c.central.x - 32, c.central.y - 32) for c in cutouts]
  assert np.median(offsets) < 0.5
  bright = [c for c in cutouts if c.central.mag[2] < 18 and not c.neighbours]
  for c in bright:
    assert truth["mask"][cutouts.index(c), 32, 32] == 1


def test_sky_residual_has_the_stated_sigmas_and_band_correlation():

  rng = np.random.default_rng(3)
  sigma = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
  draws = np.stack([dataset.sky_residual(rng, sigma, 0.9) for _ in range(20000)])
  # Independent computation: Var = sigma^2 (rho + 1 - rho), Corr = rho (standard errors ~0.005 and ~0.002).
  np.testing.assert_allclose(draws.std(axis=0) / sigma, 1.0, atol=0.02)
  corr = np.corrcoef(draws.T)[np.triu_indices(5, 1)]
  np.testing.assert_allclose(corr, 0.9, atol=0.01)
  independent = np.stack([dataset.sky_residual(rng, sigma, 0.0) for _ in range(20000)])
  assert np.abs(np.corrcoef(independent.T)[np.triu_indices(5, 1)]).max() < 0.03
