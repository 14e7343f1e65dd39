"""segment.report: markdown tables and the segmentation report from a metrics dict, by hand."""

import math

from stargal_jax.segment import report


def test_markdown_table_formats_numbers_strings_and_missing_values():
  lines = report.markdown_table([{"name": "ours", "iou": 0.123456, "n": 7}, {"name": "sep", "iou": math.nan}],
                                (("name", "segmentation"), ("iou", "IoU"), ("n", "n")))
  assert lines == ["| segmentation | IoU | n |", "|---|---|---|", "| ours | 0.123 | 7 |", "| sep | n/a | n/a |"]


def test_segmentation_report_lists_every_section_present():
  out = {"reconstruction": {"models": {"conv_ae": {"mse": 0.5, "mse_per_band": dict(zip("ugriz", [0.5] * 5)),
                                                   "unexplained_fraction": 0.25, "n_images": 3, "steps": 6}}},
         "segmentation": {"model": "residual_conv_ae", "hypercolumn_layers": [0, 6, 7], "hypercolumn_channels": 121,
                          "detection_share": 0.5, "detection_sigma_px": 1.2, "k": 4, "sample_pixels": 100,
                          "fit_images": 10, "snr_bands": "gri", "snr_threshold": 1.0, "rule": "snr_threshold",
                          "n_objects": 5},
         "k_sweep": [{"k": 4, "n_object_clusters": 2}], "plots": ["plots/x.png"]}
  text = "\n".join(report.segmentation_report_lines(out))
  assert "| conv_ae | 6 | 0.500 | 0.250 |" in text
  assert "holding 0.5 of the feature variance" in text and "k = 4" in text
  assert "| 4 | 2 |" in text and "![plots/x.png](plots/x.png)" in text
  assert "Against the simulator's truth" not in text  # no scores: no truth tables
