"""Evaluation of a checkpoint: CAMEL-Bench per domain, ArabicMMLU, English benchmarks."""
