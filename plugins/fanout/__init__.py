"""fanout: parallel ML pipelines (preprocessing, training, rendering) on Airflow.

Everything in this package runs without Airflow, except ``fanout.dagkit`` which holds
the small amount of glue the DAG files share.
"""
