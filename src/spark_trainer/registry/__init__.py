"""The MLflow model registry: versions, aliases, the promotion audit log, and the checks a bundle passes before it is registered."""
