"""Spark: building or joining a SparkSession and getting the model to executors
(:mod:`.session`), and the DataFrame API (:mod:`.dataframe`, :func:`zoo_serving.predict_df`).
The long-running serving runner on Spark is :mod:`zoo_serving.runners.spark`."""
