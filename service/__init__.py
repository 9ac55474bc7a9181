"""cordt1 service: the hospital side of the pipeline (reading exams, running them, jobs, API).

Where things are (each subpackage's docstring gives its import rules, and
``tests/test_layout.py`` enforces them):

- :mod:`service.inputs`: DICOM and NIfTI files to arrays (series, slabs, protocol, T1, reader
  masks and lesions);
- :mod:`service.pipeline`: one exam end to end on files
  (:func:`service.pipeline.run.process_exam`),
  the normative model, follow-up, result writing;
- :mod:`service.exports`: research exports (BIDS derivatives, the group table, ``cordt1 process``);
- :mod:`service.jobs`: the job store, Celery tasks, leases, delivery to the PACS, operator actions;
- :mod:`service.api` (+ static ``service/web/``): the HTTP API, web page, health and metrics;
- :mod:`service.phantom`: the synthetic cohort generator, the demo and its PACS;
- top level: :mod:`service.settings` (the one settings object), :mod:`service.logs`,
  :mod:`service.pseudonym`, :mod:`service.server` (`cordt1 serve`), :mod:`service.cli`.

The settings, logs and pseudonym modules may be imported from anywhere in the service; the CLI
and the server sit on top and import everything.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cordt1")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+src"
