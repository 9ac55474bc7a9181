"""The HTTP API, web page, health checks and Prometheus metrics of `cordt1 serve`.

Import rules: this package reads the job store (:mod:`service.jobs.store`), the settings and the
Celery app; the DICOM receiver and the job machinery never import it. The page's static files
live in ``service/web/`` and are served as they are (no build step, nothing from a CDN).
"""
