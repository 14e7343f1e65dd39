"""Pixel-wise segmentation (METHODS.md "Segmentation"): a plain and a residual conv AE trained (MSE) on the
unlabelled images and compared on held-back ones; hypercolumns of the residual AE's layers -> k-means on a pixel
sample -> object/background clusters by mean S/N -> connected components; every labelled cutout segmented
(`DIR/segmentation.npz`), scored against the simulator's truth beside SEP tuned on the same cutouts, plus the k
sweep. `:smoke` shrinks everything.

Feature maps of the conv AEs (40-40-20-20, no output conv), the indices of `hypercolumn_layers`:
0 enc 32px (40 ch), 1 enc 16px (40), 2 enc 8px (20), 3 enc 4px (20), 4 decoder projection 4px (20),
5 dec 8px (20), 6 dec 16px (40), 7 dec 32px (40; in the residual AE it carries the skip from map 0).
Default (0, 6, 7): the finest encoder map and the two finest decoder maps, 120 channels.
"""

import ml_collections

from configs import common


def seg_config(smoke: bool = False) -> ml_collections.ConfigDict:
  """The `config.seg` block, shared with configs/seg_cvae.py."""
  seg = ml_collections.ConfigDict()
  seg.model = "residual_conv_ae"  # Whose features make the hypercolumns.
  seg.compare_models = ("conv_ae", "residual_conv_ae")  # Trained and compared on held-back images.
  seg.ae = common.stage1_ae_config(steps=300)  # The study's stage-1 AE settings, MSE; `model` set per run.
  del seg.ae["model"]
  seg.holdout_images = 500  # Unlabelled images held back from training, for the reconstruction MSE.
  seg.hypercolumn_layers = (0, 6, 7)
  # A matched-filtered detection S/N channel appended to the hypercolumns with this share of the k-means feature
  # variance (0 = the study's pure AE hypercolumns); its Gaussian filter width in pixels (SDSS PSF sigma ~1.5).
  seg.detection_share = 0.5
  seg.detection_sigma_px = 1.2
  seg.k = 4
  seg.ks = (2, 3, 4, 5, 6, 8)  # The k sweep (k itself is always included).
  seg.sample_pixels = 50_000  # k-means sample (pixels) ...
  seg.fit_images = 2000  # ... drawn from this many unlabelled images (0 = all).
  seg.kmeans_algorithm = "kmeans"  # kmeans | minibatch
  seg.rule = "snr_threshold"  # segmentation.FOREGROUND_RULES
  seg.snr_threshold = 1.0  # Clusters whose sampled pixels' mean detection S/N exceeds this are objects.
  seg.snr_bands = "gri"  # Bands of the detection S/N image.
  # Deblending of touching sources (segment/deblend.py): a component is split at peaks of the smoothed gri S/N map
  # whose branch holds at least `deblend_contrast` of its S/N flux (SExtractor's DEBLEND_MINCONT) and
  # `deblend_min_area` pixels, over `deblend_levels` levels from `deblend_floor` sigma to its peak.
  seg.deblend = True
  seg.deblend_levels = 32
  # The protocol's choice on four distributions' tuning splits (1e-4 to 0.1 tried; the score is flat below 1e-3).
  seg.deblend_contrast = 0.0003
  seg.deblend_min_area = 5
  seg.deblend_floor = 1.0
  # Crowded fields (segment/crowding.py): a cutout whose object-pixel fraction exceeds the `flood_quantile` of the
  # fitting cutouts' fractions (measured on the first `flood_images` of them) is segmented again on a local
  # background of `local_box` px meshes, then cut to that fraction. The data switch it on; `crowding=False` only
  # for the ablation.
  # Faint sources the clusters miss (segment/faint.py): peaks of the smoothed S/N map of at least `faint_peak` sigma
  # outside every object component, with footprints at `faint_low` sigma. Off: on the default data's tuning split
  # (benchmarks/segmentation_protocol.py, README) every peak tried (4-6 sigma) lowered the detection F1 (purity).
  seg.faint = False
  seg.faint_peak = 5.0
  seg.faint_low = 2.0
  # Mask edges at an isophote (segment/edges.py): each segment's outline moved to `edge_level` sigma of the
  # smoothed S/N map, the clusters still deciding which objects there are and which pixel is whose.
  # A segment whose peak is below edge_level / edge_peak_fraction takes edge_peak_fraction x its peak instead
  # (0: one level for all). After the edges, a neighbour segment whose peak in that map is below `edge_min_peak` sigma
  # is dropped (0: all kept; the central always stays). The values come from the protocol's tuning grid
  # (benchmarks/segmentation_protocol.py --tune-on) on the tuning splits (400 cutouts each) of the v2.1 default data
  # and three shifted simulations together: the best mean score among settings whose mean neighbour purity there is
  # at least SEP's (0.5 / 8; the unconstrained best, 0.5 / 7, fell below SEP's purity on every scored set), checked
  # on two distributions scored by no earlier choice (README).
  seg.edges = True
  seg.edge_level = 8.0
  seg.edge_peak_fraction = 0.5
  seg.edge_min_peak = 8.0
  seg.crowding = True
  seg.flood_images = 500
  seg.flood_quantile = 0.995
  seg.local_box = 16
  seg.min_area = 5  # Smaller components are dropped.
  seg.connectivity = 8
  seg.centre_radius = 5.0  # The central object must come within this many pixels of the cutout centre.
  seg.chunk = 64  # Images per hypercolumn chunk (64 x 64 x 64 x 120 float32 = 126 MB).
  seg.score_images = 0  # Labelled cutouts scored against truth and segmented by SEP (0 = all).
  seg.sep_bands = ("r", "gri", "ugriz")  # SEP tuning grid: detection band(s) ...
  seg.sep_thresholds = (0.8, 1.0, 1.5, 2.0, 3.0)  # ... x threshold in sigma (after its 3x3 filter).
  seg.sep_minarea = 5
  seg.mag_bins = (19.0, 21.0)  # r-magnitude bins of the neighbour completeness / purity tables.
  seg.mask_dilate = 2  # seg_cvae: neighbour masks grown by this many pixels before the noise fill.
  seg.classifier_pipeline = "ae_vae"  # seg_cvae: the classification run on masked and original inputs.
  seg.n_plot = 12  # Cutouts in the overlay figure.
  if smoke:
    seg.ae.train.steps = 6
    seg.ae.train.batch_size = 32
    seg.ae.train.checkpoint_every = 3
    seg.ae.train.log_every = 2
    seg.holdout_images = 50
    seg.ks = (3, 4)
    seg.sample_pixels = 5000
    seg.fit_images = 100
    seg.chunk = 32
    seg.sep_bands = ("gri",)
    seg.sep_thresholds = (1.0, 2.0)
    seg.n_plot = 4
    seg.flood_images = 50
  return seg


def get_config(arg=None):
  config = common.base_config()
  config.pipeline = "segmentation"
  config.seg = seg_config(smoke="smoke" in common.parse_arg(arg, ("smoke",)))
  return common.finish(config, arg)
