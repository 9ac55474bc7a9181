"""Result writers: DICOM Parametric Maps (and other result objects), identity of results.

Never imports ``service/``.
"""
