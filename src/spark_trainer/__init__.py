"""SparkTrainer: the library behind the DVC stages in `stages/`.

Each stage script reads its params section (`spark_trainer.params`), does its work
through a subpackage here, writes its outputs atomically and its metrics
(`spark_trainer.outputs`), and mirrors the run to MLflow (`spark_trainer.tracking`).
"""

__version__ = "0.1.0"
