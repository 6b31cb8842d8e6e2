"""The fanout run report: a page inside the Airflow UI that shows what a fan-out did and made.

Registered by ``plugins/fanout_plugin.py`` (the ``fanout`` AirflowPlugin): a FastAPI app mounted
by the api-server under ``/fanout`` and a "Fanout report" tab on every DAG run's page. Modules, one
concern each:

* ``mount``    -- what the plugin registers: the app, built on its first request, and the tab;
* ``model``    -- plain records of a run and its task tries (no Airflow imports);
* ``timeline`` -- what the tries say: parallelism, efficiency, critical path, queue wait;
* ``charts``   -- matplotlib figures as inline SVG (timeline, pipeline, loss curves, drops);
* ``outputs``  -- a run's artifacts: which exist, the manifests to show, paths that stay inside;
* ``streaming``-- artifact bytes over HTTP, with range requests (the video seeks);
* ``airflow``  -- reading runs, tries, notes, DAG structure and asset-chained runs from Airflow;
* ``kube``     -- where each pod ran, from the Kubernetes API (when the executor is Kubernetes);
* ``auth``     -- every endpoint needs an Airflow user who may read that DAG's runs;
* ``app``      -- the routes and the page.

Task processes load the plugin too, but import only ``mount``: the rest is the api-server's.
"""
