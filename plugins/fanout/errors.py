"""Errors that retrying cannot fix.

Workloads raise ``BadInputError`` for malformed data, missing inputs and invalid
parameters. The DAG glue turns it into Airflow's fail-fast exception so no retry is
spent on it; anything else (a killed process, a flaky store) is retried.
"""


class BadInputError(ValueError):
    """The input is wrong; running again will not help. The message names the problem."""
