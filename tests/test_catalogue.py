"""catalogue: tables round-trip through astropy (FITS, ECSV) with their columns, units, dtypes, descriptions, row
order and header; the flag bits; the run's fingerprint; non-finite pixels counted from the input files."""

import json

import astropy.units as u
import ml_collections
import numpy as np
import pytest
from astropy.io import fits

from stargal_jax import catalogue, registry
from stargal_jax.data import formats, store as stores


def config(num_seeds=1):
  return ml_collections.ConfigDict({"num_seeds": num_seeds, "pipeline": "ae_vae",
                                    "score": {"method": "uncorrelated_with_magnitude"},
                                    "data": {"star_fraction": 0.3}})


def example_columns(n=7, seed=0):
  rng = np.random.default_rng(seed)
  columns = {"id": np.arange(1, n + 1), "objID": rng.integers(10**17, 10**18, n), "field": ["001035-6-0017"] * n,
             "ra": rng.uniform(0, 360, n), "dec": rng.uniform(-10, 10, n), "x": rng.uniform(0, 2048, n),
             "y": rng.uniform(0, 1489, n), "r_mag": rng.uniform(15, 22, n), "score": rng.normal(size=n),
             "score_quantile": rng.uniform(size=n), "class": rng.integers(0, 2, n),
             "score_s000": rng.normal(size=n), "class_s000": rng.integers(0, 2, n),
             "concentration": np.r_[np.nan, rng.uniform(0.2, 0.4, n - 1)],
             "flag_saturated": rng.integers(0, 2, n).astype(bool), "flag_edge": rng.integers(0, 2, n).astype(bool),
             "eval_label": ["STAR", "GALAXY", "QSO", "GALAXY", "STAR", "GALAXY", "GALAXY"][:n]}
  columns["flags"] = catalogue.flag_mask(columns)
  return columns


@pytest.mark.parametrize("fmt", ["fits", "ecsv"])
def test_round_trip_keeps_columns_units_dtypes_descriptions_and_rows(tmp_path, fmt):
  columns = example_columns()
  header = catalogue.header_cards(tmp_path, config(), "a test", 7, extra=[("FIELD", "001035-6-0017", "field")])
  table = catalogue.make_table(columns, header)
  path = catalogue.write_catalogue(table, tmp_path / f"cat.{fmt}")
  back = catalogue.read_catalogue(path)
  assert back.colnames == list(columns)[:-2] + ["flags", "eval_label"]  # flags before the evaluation label
  for name, values in columns.items():
    spec = catalogue.column_spec(name)
    if np.dtype(spec.dtype).kind == "U":  # strings come back as wide as the longest value
      assert back[name].dtype.kind == "U", name
    else:
      assert back[name].dtype.newbyteorder("=") == np.dtype(spec.dtype), name  # FITS is big-endian
    assert (back[name].unit or None) == (u.Unit(spec.unit) if spec.unit is not None else None) or (
        spec.unit == u.dimensionless_unscaled and back[name].unit in (None, u.dimensionless_unscaled)), name
    assert back[name].description == spec.description, name
    expected = np.asarray(values).astype(spec.dtype)
    if expected.dtype.kind == "f":
      np.testing.assert_array_equal(np.asarray(back[name]), expected)  # NaN in the same rows, exact values
    else:
      assert np.asarray(back[name]).tolist() == expected.tolist(), name
  assert back["ra"].unit == u.deg and back["x"].unit == u.pix and back["r_mag"].unit == u.mag
  for keyword, value in (("PIPELINE", "ae_vae"), ("STARFRAC", 0.3), ("FINGERPR", "not recorded"),
                         ("NOBJ", 7), ("FIELD", "001035-6-0017"), ("RUNDIR", str(tmp_path.resolve()))):
    assert back.meta[keyword] == value, keyword


def test_fits_header_has_the_descriptions_for_other_readers_and_a_valid_checksum(tmp_path):
  table = catalogue.make_table(example_columns(), catalogue.header_cards(tmp_path, config(), "x", 7))
  path = catalogue.write_catalogue(table, tmp_path / "cat.fits")
  with fits.open(path, checksum=True) as hdul:
    header = hdul["CATALOGUE"].header
    assert hdul["CATALOGUE"].verify_checksum() == 1 and hdul["CATALOGUE"].verify_datasum() == 1
  names = [header[f"TTYPE{i}"] for i in range(1, header["TFIELDS"] + 1)]
  assert names == table.colnames == sorted(example_columns(), key=catalogue.column_order)
  assert header[f"TCOMM{names.index('ra') + 1}"] == catalogue.COLUMNS["ra"].description  # TOPCAT, fv
  assert header[f"TUNIT{names.index('dec') + 1}"] == "deg"
  assert header.comments["STARFRAC"].startswith("prior point-source fraction")


def test_csv_holds_the_values_in_row_order(tmp_path):
  columns = example_columns()
  path = catalogue.write_catalogue(catalogue.make_table(columns), tmp_path / "cat.csv")
  lines = path.read_text().splitlines()
  assert lines[0].split(",") == sorted(columns, key=catalogue.column_order)
  assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(1, 8))
  assert catalogue.format_of("a.CSV") == "csv" and catalogue.format_of("a.fits.gz") == "fits"


def test_every_column_must_be_described():
  with pytest.raises(registry.UnknownName, match="unknown catalogue column 'magic'"):
    catalogue.make_table({"id": [1], "magic": [2.0]})
  with pytest.raises(ValueError, match="differ in length"):
    catalogue.make_table({"id": [1, 2], "score": [0.5]})
  assert catalogue.seed_column("class", 12) == "class_s012"
  assert "seed 12" in catalogue.column_spec("class_s012").description
  assert all(spec.description for spec in catalogue.COLUMNS.values())


def test_flag_bits_are_the_boolean_columns():
  flags = {"flag_nonfinite": [1, 0, 0, 1], "flag_saturated": [0, 1, 0, 1], "flag_edge": [0, 0, 0, 1]}
  assert catalogue.flag_mask(flags).tolist() == [1, 2, 0, 1 + 2 + 8]
  assert catalogue.flag_mask({"id": [1, 2]}).tolist() == [0, 0]


def test_fingerprint_from_run_identity_or_not_recorded(tmp_path):
  assert catalogue.run_fingerprint(tmp_path) == "not recorded"
  (tmp_path / "run_identity.json").write_text(json.dumps({"fingerprint": "ab" * 32, "config": "configs/cvae.py"}))
  assert catalogue.run_fingerprint(tmp_path) == "ab" * 32
  assert catalogue.run_config_name(tmp_path) == "configs/cvae.py"
  cards = dict((k, v) for k, v, _ in catalogue.header_cards(tmp_path, config(3), "x", 1))
  assert cards["FINGERPR"] == "ab" * 32 and cards["NSEEDS"] == 3 and cards["SWVERSN"]


def test_nonfinite_pixels_come_from_the_input_files(tmp_path):
  rng = np.random.default_rng(3)
  images = rng.normal(size=(5, 5, 64, 64)).astype(np.float32)
  images[1, 2, :3, :4] = np.nan
  images[3, 0, 10, 10] = np.inf
  expected = [np.count_nonzero(~np.isfinite(im)) for im in images]
  formats.write_unlabelled(tmp_path / "a.npy", images[:2])
  formats.write_unlabelled(tmp_path / "b.npy", images[2:])
  store = stores.open_dataset(tmp_path, "unlabelled", cache_dir=tmp_path / "cache")
  assert np.isfinite(store.read(np.arange(5))).all()  # the store holds them as 0 (nan_policy 'zero')
  assert catalogue.nonfinite_pixels(store).tolist() == expected == [0, 12, 0, 1, 0]
  assert catalogue.nonfinite_pixels(store.subset([3, 1])).tolist() == [1, 12]
