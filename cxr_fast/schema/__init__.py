"""The run schema: every setting of a run declared once (``run``), how one is declared and refused
(``fields``), and the command-line flags derived from the declarations (``flags``)."""
