"""Real SDSS frames -> cutouts, checked on the real fields against independent measurements.

Two fields: 001035-6-0017 (high latitude, sparse: noise, centring in all five bands, CLI) and
005405-6-0099 (Galactic plane, crowded, where the frames' WCS is off by up to ~1 pixel between
bands: held-out alignment). Skips cleanly when ../shared/data is absent.
"""

import bz2
import csv
import io
import subprocess
import sys

import numpy as np
import pytest
import sep
from astropy.io import fits
from scipy import interpolate, ndimage
from scipy.spatial import cKDTree

from stargal_jax import BANDS
from stargal_jax import sdss_frames as sf

SPARSE = "001035-6-0017"
CROWDED = "005405-6-0099"


@pytest.fixture(scope="module")
def sparse(sdss_frames_dir):
  return sf.load_field(sdss_frames_dir / SPARSE)


@pytest.fixture(scope="module")
def crowded(sdss_frames_dir):
  return sf.load_field(sdss_frames_dir / CROWDED, refine_alignment=False)


# -- independent measurements ------------------------------------------------------------------

def _window_centroid(image, x, y, sigma=1.5, iterations=100):
  """SExtractor's windowed centroid, in numpy: x <- x + 2 sum(w I dx) / sum(w I), Gaussian w."""
  yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
  for _ in range(iterations):
    dx, dy = xx - x, yy - y
    r2 = dx ** 2 + dy ** 2
    weighted = image * np.exp(-r2 / (2 * sigma ** 2)) * (r2 < (4 * sigma) ** 2)
    step_x, step_y = 2 * (weighted * dx).sum() / weighted.sum(), 2 * (weighted * dy).sum() / weighted.sum()
    x, y = x + step_x, y + step_y
    if abs(step_x) < 1e-5 and abs(step_y) < 1e-5:
      break
  return x, y


def _native_positions(frame):
  """Sources found directly on a band's own pixels (no WCS involved): SEP at 5 sigma, windowed."""
  data = np.ascontiguousarray(frame.image, np.float64)
  background = sep.Background(data)
  data = data - background.back()
  objects = sep.extract(data, 5.0, err=background.globalrms, minarea=5)
  x, y, flag = sep.winpos(data, objects["x"], objects["y"], np.full(len(objects), 1.5))
  ok = (flag == 0) & (objects["flag"] == 0)
  return np.stack([x[ok], y[ok]], axis=1)


def _isolated_point_sources(field, sources, snr=30.0, max_counts=20000.0, isolation=12.0, top_fraction=0.4):
  """Bright, unsaturated, concentrated (stars: high 2px/5px aperture flux ratio) and isolated."""
  sources = sources[(sources["snr"] >= snr) & (sources["max_counts"] < max_counts) & (sources["flag"] == 0)]
  data = np.ascontiguousarray(field.reference.image, np.float64)
  everything = sep.extract(data, 3.0, err=sep.Background(data).globalrms, minarea=5)
  distance, _ = cKDTree(np.c_[everything["x"], everything["y"]]).query(np.c_[sources["x"], sources["y"]], k=2)
  inner, _, _ = sep.sum_circle(data, sources["x"], sources["y"], 2.0)
  outer, _, _ = sep.sum_circle(data, sources["x"], sources["y"], 5.0)
  concentration = inner / outer
  keep = (concentration >= np.quantile(concentration, 1 - top_fraction)) & (distance[:, 1] > isolation)
  return sources[keep]


def _median_residual(predicted, detected, radius=1.5):
  distance, index = cKDTree(detected).query(predicted, distance_upper_bound=radius)
  ok = np.isfinite(distance)
  return np.median(detected[index[ok]] - predicted[ok], axis=0), int(ok.sum())


def _check_centred(images, noise, bands, min_stars, min_snr=30.0, tolerance=0.5):
  centre = images.shape[-1] // 2
  core = slice(int(centre) - 4, int(centre) + 6)
  for band in bands:
    b = BANDS.index(band)
    flux = np.nansum(images[:, b, core, core], axis=(1, 2))
    band_snr = flux / np.sqrt(np.nansum(noise[:, b, core, core] ** 2, axis=(1, 2)))
    bright = np.flatnonzero((band_snr > min_snr) & ~np.isnan(images[:, b]).any(axis=(1, 2)))
    assert len(bright) >= min_stars, f"{band}: only {len(bright)} stars with S/N > {min_snr}"
    offsets = np.array([_window_centroid(images[k, b], centre, centre) for k in bright]) - centre
    error = np.hypot(offsets[:, 0], offsets[:, 1])
    assert error.max() < tolerance, f"{band}: centroid offsets up to {error.max():.2f} px"


# -- frame reading -----------------------------------------------------------------------------

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


# -- resampling and cutouts --------------------------------------------------------------------

def test_r_cutout_on_pixel_nodes_is_the_frame_slice(sparse):
  """Object on a pixel centre: the r samples fall on pixel centres, so no interpolation, and the cutout is
  frame[y-32:y+32, x-32:x+32]."""
  images, noise, meta = sf.cut_cutouts(sparse, [[1000.0, 700.0]])
  r = BANDS.index("r")
  np.testing.assert_allclose(images[0, r], sparse.reference.image[668:732, 968:1032], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(noise[0, r], sparse.reference.noise[668:732, 968:1032], rtol=1e-5)
  assert meta["n_nan"][0] == 0 and images.dtype == np.float32
  # The simulator's convention, object on pixel 32: frame[y-32:y+32, x-32:x+32] for integer positions.
  images, _, _ = sf.cut_cutouts(sparse, [[1000.0, 700.0]], centre=32.0)
  np.testing.assert_allclose(images[0, r], sparse.reference.image[668:732, 968:1032], rtol=1e-5, atol=1e-6)


def test_windowed_spline_equals_whole_frame_spline(sparse):
  x, y = np.meshgrid(np.arange(64) + 1200.3, np.arange(64) + 500.7)
  bx, by = sf.r_to_band_pixels(sparse, "g", x, y)
  image = sparse.frames["g"].image.astype(np.float64)
  whole = ndimage.map_coordinates(image, [by, bx], order=3, mode="mirror")
  windowed = sf.resample(image, bx, by)
  assert np.max(np.abs(windowed - whole)) < 1e-5 * np.max(np.abs(whole))


def test_pixels_outside_a_frame_are_nan(sparse):
  images, noise, meta = sf.cut_cutouts(sparse, [[10.0, 20.0]])
  r = BANDS.index("r")
  # r samples at x0 + j - 32: columns j < 22 (x < -0.5) and rows i < 12 (y < -0.5) are outside.
  expected = np.zeros((64, 64), bool)
  expected[:12, :] = True
  expected[:, :22] = True
  np.testing.assert_array_equal(np.isnan(images[0, r]), expected)
  np.testing.assert_array_equal(np.isnan(noise[0]), np.isnan(images[0]))
  assert meta["n_nan"][0] == np.isnan(images[0]).sum()


def test_sky_and_pixel_positions_give_the_same_cutouts(sparse):
  sources = sf.detect_sources(sparse, snr=50.0)[:4]
  pixel = np.c_[sources["x"], sources["y"]]
  ra, dec = sf.r_pixels_to_sky(sparse, sources["x"], sources["y"])
  by_pixel, noise_pixel, _ = sf.cut_cutouts(sparse, pixel)
  by_sky, noise_sky, meta = sf.cut_cutouts(sparse, np.c_[ra, dec], coords="sky")
  np.testing.assert_allclose(np.c_[meta["x"], meta["y"]], pixel, atol=1e-6)
  np.testing.assert_allclose(by_sky, by_pixel, rtol=1e-4, atol=1e-5 * np.abs(by_pixel).max())
  np.testing.assert_allclose(noise_sky, noise_pixel, rtol=1e-4)
  with pytest.raises(ValueError, match=r"valid: \['pixel', 'sky'\]"):
    sf.cut_cutouts(sparse, pixel, coords="galactic")


def test_stars_are_centred_in_all_five_bands(sparse):
  stars = _isolated_point_sources(sparse, sf.detect_sources(sparse, snr=30.0))
  images, noise, meta = sf.cut_cutouts(sparse, np.c_[stars["x"], stars["y"]])
  assert (meta["n_nan"] == 0).all()
  _check_centred(images, noise, BANDS, min_stars=5)


# -- alignment: WCS chain plus measured offset against each band's own detections ----------------

def test_alignment_on_held_out_sources(crowded):
  stars = sf.detect_sources(crowded, snr=20.0)
  fit, held_out = stars[::2], stars[1::2]
  native = {band: _native_positions(frame) for band, frame in crowded.frames.items() if band != "r"}
  offsets, n_matched = sf.measure_band_offsets(crowded.frames, fit["x"], fit["y"], native=native)
  aligned = sf.Field(crowded.name, crowded.frames, offsets, n_matched)
  for band in native:
    predicted = np.stack(sf.r_to_band_pixels(aligned, band, held_out["x"], held_out["y"]), axis=1)
    corrected, n = _median_residual(predicted, native[band])
    assert n >= 50, band
    assert np.all(np.abs(corrected) < 0.1), f"{band}: held-out residual {corrected} px"
  # Why the offsets exist: the frames' own WCS puts i-band sources ~0.9 px off in this field.
  wcs_only = np.stack(sf.r_to_band_pixels(crowded, "i", held_out["x"], held_out["y"]), axis=1)
  raw, _ = _median_residual(wcs_only, native["i"])
  assert np.hypot(*raw) > 0.5
  # And the held-out stars come out centred in the bands bright enough to measure here.
  isolated = _isolated_point_sources(aligned, held_out)
  images, noise, _ = sf.cut_cutouts(aligned, np.c_[isolated["x"], isolated["y"]])
  _check_centred(images, noise, ("g", "r", "i", "z"), min_stars=10)


# -- detection ---------------------------------------------------------------------------------

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


# -- command line ------------------------------------------------------------------------------

def _write_csv(path, header, rows):
  with open(path, "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(header)
    writer.writerows(rows)


def test_cli_writes_the_study_format(sparse, tmp_path, monkeypatch):
  monkeypatch.setattr(sf.cli, "load_field", lambda *args, **kwargs: sparse)
  sources = sf.detect_sources(sparse, snr=50.0)[:5]
  x = np.r_[sources["x"], 10.0]  # the last lies partly outside the frame
  y = np.r_[sources["y"], 20.0]
  ra, dec = sf.r_pixels_to_sky(sparse, x, y)
  classes = ["STAR", "GALAXY", "QSO", "STAR", "GALAXY", "STAR"]
  _write_csv(tmp_path / "sky.csv", ["ra", "dec", "objID", "class", "z"],
             [[f"{a:.10f}", f"{d:.10f}", 1000 + k, c, 0.01 * k] for k, (a, d, c) in enumerate(zip(ra, dec, classes))])
  _write_csv(tmp_path / "pix.csv", ["x", "y"], [[f"{a:.6f}", f"{b:.6f}"] for a, b in zip(x, y)])
  out_sky, out_pix = tmp_path / "sky", tmp_path / "pix"
  assert sf.main(["--field", "unused", "--positions", str(tmp_path / "sky.csv"), "--out", str(out_sky),
                  "--per-file", "4"]) == 0
  assert sf.main(["--field", "unused", "--positions", str(tmp_path / "pix.csv"), "--out", str(out_pix)]) == 0

  files = sorted(out_sky.glob(f"{SPARSE}_*.npy"))
  assert [f.name for f in files] == [f"{SPARSE}_000000.npy", f"{SPARSE}_000004.npy"]
  records = np.concatenate([np.load(f, allow_pickle=False) for f in files])
  assert records.dtype.names == ("objID", "image", "class", "z") and records["image"].shape == (5, 5, 64, 64)
  np.testing.assert_array_equal(records["objID"], np.arange(1000, 1005))
  np.testing.assert_array_equal(records["class"], classes[:5])
  expected, expected_noise, _ = sf.cut_cutouts(sparse, np.c_[sources["x"], sources["y"]])
  np.testing.assert_allclose(records["image"], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
  np.testing.assert_allclose(np.load(out_sky / "noise.npy", allow_pickle=False), expected_noise, rtol=1e-4)
  with open(out_sky / "cutouts.csv") as handle:
    rows = list(csv.DictReader(handle))
  assert len(rows) == 6 and rows[5]["record"] == "-1" and int(rows[5]["n_nan"]) > 0
  assert rows[4]["file"] == f"{SPARSE}_000004.npy" and rows[4]["record"] == "0" and rows[4]["noise_row"] == "4"

  unlabelled = np.concatenate([np.load(f, allow_pickle=False) for f in sorted(out_pix.glob(f"{SPARSE}_*.npy"))])
  assert unlabelled.dtype.names == ("image",) and len(unlabelled) == 5  # the study: one record per file
  np.testing.assert_allclose(unlabelled["image"], records["image"], rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.slow  # a subprocess
def test_cli_detection_mode_and_module_entry(sparse, tmp_path, monkeypatch):
  monkeypatch.setattr(sf.cli, "load_field", lambda *args, **kwargs: sparse)
  out = tmp_path / "out"
  assert sf.main(["--field", "unused", "--detect-snr", "300", "--out", str(out)]) == 0
  with open(out / "cutouts.csv") as handle:
    rows = list(csv.DictReader(handle))
  expected = sf.detect_sources(sparse, snr=300.0)
  np.testing.assert_allclose([float(r["x"]) for r in rows], expected["x"], atol=1e-4)
  written = [r for r in rows if r["record"] != "-1"]
  assert len(written) >= 3 and len(list(out.glob(f"{SPARSE}_*.npy"))) == len(written)
  first = np.load(out / written[0]["file"], allow_pickle=False)
  assert first.dtype.names == ("image",) and first["image"].shape == (1, 5, 64, 64)
  assert np.isfinite(first["image"]).all()
  assert np.load(out / "noise.npy", allow_pickle=False).shape == (len(written), 5, 64, 64)
  result = subprocess.run([sys.executable, "-m", "stargal_jax.sdss_frames", "--help"], capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0 and "--positions" in result.stdout
