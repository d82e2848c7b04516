"""Evaluation: MMLU scoring identical to lm-evaluation-harness, and calibration."""
