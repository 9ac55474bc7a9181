"""One exam end to end on files, and the normative model it is scored against.

:func:`service.pipeline.run.process_exam` reads the exam (:mod:`service.inputs`), runs the
quantitative stages (:mod:`service.pipeline.quantify`, on :mod:`processing`) and writes every
result (:mod:`service.pipeline.result_writer`, objects from :mod:`reports`).

Import rules: uses :mod:`service.inputs`, :mod:`processing`, :mod:`reports`, :mod:`dicom_node`
(tags only) and the top-level settings; never :mod:`service.jobs`, :mod:`service.exports`,
:mod:`service.api` (no job store, broker or network here).
"""
