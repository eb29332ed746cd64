"""The report: the paper's tables, figures and other results from a study folder, and the --json document.

Reads only ``study.yaml``, ``results.jsonl`` and each run's ``predictions.npz``, and imports no torch, so a
report can be made anywhere a study folder is copied. The modules: ``build`` (``make_report``, Tables 2
and 3, report.md), ``data`` (reading a study folder: ``read_study``), ``stats`` (the star, the z-test, the
paired DeLong test), ``format`` (the Section type and number formats), ``sections`` (significance,
architectures, Table 1, Hernia 2,000, leakage), ``controls`` (the control study's two answers), ``document``
(the ``--json`` document), ``provenance`` (init and recipe), ``against`` (two studies side by side) and
``figures`` (Figures 2-4).
"""
