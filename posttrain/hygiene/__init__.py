"""Data hygiene: exact and MinHash near-duplicate removal, n-gram decontamination against eval sets, PII
redaction, preference-data diagnostics and template-consistency checks. One streaming pass (``clean.py``) backs
the ``posttrain data`` commands (``cli.py``) and the pipeline's ``data`` stage and pre-training decontamination
(``stage.py``). Formats and report fields: docs/HYGIENE.md."""
