"""Tests for stargal_jax.simulate against independent computations (GalSim drawing, closed forms,
astropy, binomial statistics) and for the exact on-disk formats, determinism and truth."""

import filecmp
import json
from pathlib import Path

import galsim
import numpy as np
import pytest
from astropy.cosmology import Planck18
from scipy import integrate, optimize

from stargal_jax.data.formats import CLASS_CODES, LABELLED_DTYPE, UNLABELLED_DTYPE
from stargal_jax.simulate import SimParams, dataset, populations as pop, render, simulate_cutouts, simulate_dataset
from stargal_jax.simulate import params as P


def fixed_conditions(fwhm=1.2, g1=0.0, g2=0.0) -> pop.Conditions:
  sky_nmgy = 10.0 ** (-0.4 * (np.array(P.SKY_MAG_ARCSEC2) - 22.5)) * P.PIXEL_SCALE_ARCSEC ** 2
  return pop.Conditions(camcol=3, psf_fwhm_arcsec=fwhm * np.array(P.SEEING_RATIO_TO_R),
                        psf_g1=np.full(5, g1), psf_g2=np.full(5, g2), sky_dn=sky_nmgy / np.array(P.NMGY_PER_DN),
                        nmgy_per_dn=np.array(P.NMGY_PER_DN), gain=P.GAIN_E_PER_DN[2].copy(),
                        dark_variance=P.DARK_VARIANCE_DN2[2].copy())


def galsim_reference(source: pop.Source, conditions: pop.Conditions, band: int) -> np.ndarray:
  """GalSim's own drawImage of the same source (pixel response included); its stamp centre
  (true centre 31.5 in 0-indexed pixels for a 64-pixel image) is the reference for the offset."""
  psf = render.psf_profile(conditions, band)
  flux = source.flux_nmgy()[band]
  if source.is_point:
    profile = galsim.DeltaFunction(flux=flux)
  else:
    bulge, disk = render.galaxy_profiles(source)
    profile = flux * source.bulge_fraction[band] * bulge + flux * (1 - source.bulge_fraction[band]) * disk
  return galsim.Convolve(profile, psf).drawImage(
    nx=64, ny=64, scale=P.PIXEL_SCALE_ARCSEC, offset=(source.x - 31.5, source.y - 31.5)).array


def test_renderer_matches_galsim_draw_image():
  rng = np.random.default_rng(0)
  conditions = fixed_conditions(fwhm=1.1, g1=0.03, g2=-0.02)
  galaxy = pop.make_galaxy(rng, 17.0, 32.3, 31.8)
  star = pop.make_star(rng, 18.0, 12.4, 50.7)
  bands, objects_gri, central_r = render.render_scene([galaxy, star], conditions)
  for b in range(5):
    reference = galsim_reference(galaxy, conditions, b) + galsim_reference(star, conditions, b)
    assert np.abs(bands[b] - reference).max() < 2e-4 * reference.max()
  assert np.allclose(central_r, galsim_reference(galaxy, conditions, 2), atol=2e-4 * central_r.max())
  gri_star = sum(galsim_reference(star, conditions, b) for b in (1, 2, 3))
  assert np.allclose(objects_gri[1], gri_star, atol=2e-4 * gri_star.max())


def test_kolmogorov_transform_matches_galsim():
  conditions = fixed_conditions(fwhm=0.9, g1=0.04, g2=0.03)
  expected = render.kimage(render.psf_profile(conditions, 3))
  got = render.kolmogorov_kimage(float(conditions.psf_fwhm_arcsec[3]), 0.04, 0.03)
  assert np.abs(got - expected).max() < 1e-10


def test_psf_fwhm_measured_on_noiseless_star_matches_drawn():
  conditions = fixed_conditions(fwhm=1.3)
  star = pop.Source(kind="STAR", x=32.2, y=31.7, mag=np.full(5, 16.0), z=0.0)
  image = render.render_scene([star], conditions)[0][2]
  flux = star.flux_nmgy()[2]

  def misfit(fwhm):
    model = galsim.Kolmogorov(fwhm=fwhm, flux=flux).drawImage(
      nx=64, ny=64, scale=P.PIXEL_SCALE_ARCSEC, offset=(star.x - 31.5, star.y - 31.5)).array
    return np.sum((model - image) ** 2)

  fitted = optimize.minimize_scalar(misfit, bounds=(0.5, 3.0), method="bounded", options={"xatol": 1e-5}).x
  assert fitted == pytest.approx(conditions.psf_fwhm_arcsec[2], rel=2e-3)


def test_sky_noise_matches_configured_sigma():
  conditions = fixed_conditions()
  sky_nmgy = 10.0 ** (-0.4 * (np.array(P.SKY_MAG_ARCSEC2) - 22.5)) * P.PIXEL_SCALE_ARCSEC ** 2
  # Independent of the code: sigma = NMGY sqrt(sky/gain + dark variance), sky in DN.
  expected = np.array(P.NMGY_PER_DN) * np.sqrt(sky_nmgy / np.array(P.NMGY_PER_DN) / P.GAIN_E_PER_DN[2]
                                               + P.DARK_VARIANCE_DN2[2])
  image, saturated = render.observe(np.zeros((5, 64, 64)), conditions, np.random.default_rng(1))
  std = image.reshape(5, -1).std(axis=1)
  assert not saturated
  assert np.allclose(std, expected, rtol=0.03)  # 4096 px: 1.1% standard error
  assert np.abs(image.reshape(5, -1).mean(axis=1)).max() < 4 * expected.max() / 64


def test_object_free_pixels_of_cutouts_have_configured_noise():
  params = SimParams(neighbour_fraction=0.0, defect_fraction=0.0)
  ratios = []
  yy, xx = np.mgrid[:64, :64]
  far = np.hypot(xx - 32, yy - 32) > 22
  for cutout in simulate_cutouts(12, seed=5, params=params):
    if cutout.central.mag[2] < 17 or cutout.saturated:
      continue  # bright wings reach the corners
    sigma = cutout.conditions.sky_sigma_nmgy()
    ratios.append(cutout.image[:, far].std(axis=1) / sigma)
  ratios = np.array(ratios)
  assert len(ratios) >= 5
  assert np.allclose(ratios.mean(axis=0), 1.0, atol=0.03)


def test_point_fraction_matches_prior_binomially():
  params = SimParams(point_fraction=0.3)
  rng = np.random.default_rng(2)
  n = 20000
  kinds = [pop.sample_kind(rng, params) for _ in range(n)]
  point = np.mean([k != "GALAXY" for k in kinds])
  assert abs(point - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)
  qso = np.mean([k == "QSO" for k in kinds]) / point
  assert abs(qso - params.qso_fraction_of_point) < 4 * np.sqrt(0.2 * 0.8 / (n * point))


def test_magnitude_bins_are_all_populated():
  params = SimParams()
  rng = np.random.default_rng(3)
  r = np.array([pop.sample_r_magnitude(rng, pop.sample_kind(rng, params), params) for _ in range(5000)])
  assert r.min() >= params.r_bright_limit and r.max() <= params.r_faint_limit
  for lo, hi in [(0, 19), (19, 21), (21, 99)]:
    assert np.sum((r >= lo) & (r < hi)) > 300


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


def test_distant_galaxies_are_small_and_redshift_follows_magnitude():
  rng = np.random.default_rng(6)
  bright = [pop.make_galaxy(rng, 17.0, 32, 32) for _ in range(300)]
  faint = [pop.make_galaxy(rng, 21.5, 32, 32) for _ in range(300)]
  assert np.median([g.z for g in bright]) == pytest.approx(pop.median_redshift(17.0), rel=0.15)
  assert np.median([g.z for g in faint]) > 3 * np.median([g.z for g in bright])
  assert np.median([g.r_half_arcsec for g in faint]) < 0.6 * np.median([g.r_half_arcsec for g in bright])
  for g in bright[:20]:  # total r is exactly the requested magnitude
    assert g.mag[2] == pytest.approx(17.0, abs=1e-9)


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


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("sim")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(dataset, "CHUNK_OBJECTS", 6)  # several tasks, so the two workers really share them
    one = simulate_dataset(root / "w1", n_labelled=30, n_unlabelled=8, seed=11, workers=1)
    two = simulate_dataset(root / "w2", n_labelled=30, n_unlabelled=8, seed=11, workers=2)
  return one, two


def all_files(root: Path) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_generation_is_deterministic_and_worker_independent(tiny_dataset, tmp_path):
  one, two = tiny_dataset
  again = simulate_dataset(tmp_path / "again", n_labelled=30, n_unlabelled=8, seed=11, workers=1)
  assert all_files(one) == all_files(two) == all_files(again)
  for name in all_files(one):
    assert filecmp.cmp(one / name, two / name, shallow=False), name
    assert filecmp.cmp(one / name, again / name, shallow=False), name
  other = simulate_dataset(tmp_path / "other", n_labelled=30, n_unlabelled=8, seed=12, workers=1)
  assert not filecmp.cmp(one / "unlabelled" / "0000000.npy", other / "unlabelled" / "0000000.npy", shallow=False)
  assert not list(tmp_path.glob(".*tmp*"))


def test_files_have_exactly_the_study_formats(tiny_dataset):
  root = tiny_dataset[0]
  labelled = sorted((root / "labelled").glob("*.npy"))
  records = [np.load(p, allow_pickle=False) for p in labelled]
  assert all(r.dtype == LABELLED_DTYPE and r.dtype.names == ("objID", "image", "class", "z") for r in records)
  assert all(1 <= len(r) <= SimParams().max_records_per_file for r in records)
  stacked = np.concatenate(records)
  assert len(stacked) == 30 and len(np.unique(stacked["objID"])) == 30
  assert set(stacked["class"]) <= set(CLASS_CODES)
  assert stacked["image"].dtype == np.float32 and stacked["image"].shape[1:] == (5, 64, 64)
  unlabelled = sorted((root / "unlabelled").glob("*.npy"))
  assert len(unlabelled) == 8
  for p in unlabelled:
    r = np.load(p, allow_pickle=False)
    assert r.dtype == UNLABELLED_DTYPE and r.dtype.names == ("image",) and len(r) == 1
  manifest = json.loads((root / "manifest.json").read_text())
  assert manifest["n_labelled"] == 30 and manifest["version"] == P.SIM_VERSION
  assert SimParams.from_dict(manifest["params"]) == SimParams()

  with np.load(root / "truth" / "labelled_truth.npz", allow_pickle=False) as t:
    truth = {k: t[k] for k in t.files}
  assert list(truth["file"]) == [p.name for p, r in zip(labelled, records) for _ in range(len(r))]
  assert np.array_equal(truth["record"], np.concatenate([np.arange(len(r)) for r in records]))
  assert np.array_equal(truth["objID"], stacked["objID"])
  assert np.array_equal(truth["label"], [CLASS_CODES[c] for c in stacked["class"]])
  assert np.allclose(truth["z"], stacked["z"], rtol=1e-6, atol=1e-9)
  expected_dtypes = {"objID": np.int64, "record": np.int32, "mask": np.uint8, "label": np.int8, "z": np.float32,
                     "mag": np.float32, "r_half_arcsec": np.float32, "snr_r": np.float32,
                     "psf_fwhm_arcsec": np.float32, "n_neighbours": np.int16, "has_defect": bool,
                     "saturated": bool, "nb_object": np.int32, "nb_label": np.uint8, "nb_mag_r": np.float32,
                     "nb_x": np.float32, "nb_y": np.float32, "nb_is_point": bool}
  for key, dtype in expected_dtypes.items():
    assert truth[key].dtype == dtype, key
  assert truth["mask"].shape == (30, 64, 64) and truth["mag"].shape == (30, 5)
  assert np.all(truth["r_half_arcsec"][truth["label"] != CLASS_CODES["GALAXY"]] == 0)
  with np.load(root / "truth" / "unlabelled_truth.npz", allow_pickle=False) as u:
    assert np.all(u["objID"] == -1) and len(u["label"]) == 8


def test_truth_masks_and_neighbour_table_are_consistent():
  params = SimParams(neighbour_fraction=0.8, defect_fraction=0.0)
  cutouts = simulate_cutouts(25, seed=13, params=params)
  truth = dataset.truth_rows(cutouts, [-1] * 25, ["x"] * 25, [0] * 25)
  counts = np.bincount(truth["nb_object"], minlength=25)
  assert np.array_equal(counts, truth["n_neighbours"])
  assert counts.sum() > 10
  for row, cutout in enumerate(cutouts):
    labels = truth["nb_label"][truth["nb_object"] == row]
    assert np.array_equal(labels, np.arange(2, 2 + len(cutout.neighbours)))
    assert truth["mask"][row].max() <= 1 + len(cutout.neighbours)
    if cutout.central.mag[2] < 21 and all(n.mag[2] > cutout.central.mag[2] for n in cutout.neighbours):
      assert truth["mask"][row, 32, 32] == 1
  for x, y in zip(truth["nb_x"], truth["nb_y"]):
    assert np.hypot(x - 32, y - 32) > params.min_neighbour_distance_px - 1e-4
    assert 0 <= x <= 63 and 0 <= y <= 63
  centres = [(c.central.x, c.central.y) for c in cutouts]
  assert max(max(abs(x - 32), abs(y - 32)) for x, y in centres) <= 0.5
  # S/N follows the closed form for a point source: sqrt(sum p^2 / var) grows with flux.
  bright = [c for c in cutouts if c.central.mag[2] < 17]
  faint = [c for c in cutouts if c.central.mag[2] > 21]
  if bright and faint:
    assert min(c.snr_r for c in bright) > max(c.snr_r for c in faint)
