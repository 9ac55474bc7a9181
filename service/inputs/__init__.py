"""Reading an exam: DICOM series and NIfTI files to volumes, slabs, protocol values and T1.

Import rules: uses :mod:`processing`, :mod:`dicom_node` (component tags, never its network code)
and :mod:`service.settings`; nothing else of the service. Everything here is a plain function or
dataclass over files and arrays, testable without a job store, broker or network.
"""
