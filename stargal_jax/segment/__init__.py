"""The segmentation wing: hypercolumn k-means segmentation of cutouts, its scoring, the SEP baseline, the
segmentation jobs and real-data figures. Reads the ground floor (data, inputs, models, train, stages, metrics,
plots, report); its seg_cvae job also runs the classification wing's job. Nothing below imports it."""
