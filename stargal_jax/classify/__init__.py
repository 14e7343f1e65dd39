"""The classification wing: unsupervised star-galaxy classification of cutouts (pipelines, the label-free score,
evaluation, outputs, the job, predict on new cutouts, manifold learning). Reads the ground floor (data, inputs,
models, losses, train, stages, metrics, morphology, plots, report); nothing below imports it."""
