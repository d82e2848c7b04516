"""One exception hierarchy; every message says what went wrong and how to fix it."""


class SparkTrainerError(Exception):
    """Base class: a stage catches nothing but these to turn them into a clean exit."""


class ParamsError(SparkTrainerError):
    """params.yaml has an unknown key, a wrong type or an out-of-range value."""


class InputDataError(SparkTrainerError):
    """An input file is missing or malformed."""


class ValidationFailed(SparkTrainerError):
    """A Great Expectations suite failed; the message lists the failed expectations."""


class TrackingError(SparkTrainerError):
    """MLflow could not be reached while `tracking.strict` is true."""


class ModelSourceError(SparkTrainerError):
    """A model or tokenizer could not be built or loaded from the configured source."""


class BundleError(SparkTrainerError):
    """A bundle is incomplete, tampered with, or its signature does not verify."""


class RegistryError(SparkTrainerError):
    """The MLflow model registry has no such model, version or alias."""
