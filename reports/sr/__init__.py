"""Parts of the TID 1500 Structured Report writer (:mod:`reports.structured_report`).

- :mod:`reports.sr.concepts`: coded concepts only the SR needs (the shared ones live in
  :mod:`reports.codes`);
- :mod:`reports.sr.summary`: typed, validated reading of the per-exam summary dict;
- :mod:`reports.sr.groups`: TID 1411 / TID 1501 measurement groups;
- :mod:`reports.sr.evaluations`: the report-level "Qualitative Evaluations" container.
"""
