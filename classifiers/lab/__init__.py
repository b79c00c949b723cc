"""What trains and judges the classifier: data, training, LODO, evaluation, calibration, fetch. scikit-learn
and plotting live here only; the gateway loads nothing from this package to serve."""
