"""Measuring models and bundles: accuracy of a deployed bundle against its checkpoint (`validation`, on labelled
data read by `labelled_data`), throughput and latency (`benchmark`), and the scores both training and
validation report (`metrics`: accuracy, token accuracy, entity-span F1)."""
