"""Quality gates between `prepare` and `train`: screen, dedup, PII, toxicity, validation."""
