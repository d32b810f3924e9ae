"""One-off studies: each folder holds a script, the results it wrote and a NOTES.md (question,
command, result, decision). Run from the repository root: ``python -m experiments.<name>.<name>``.

They measured a question once, against the code of their day; they are kept to be rerun when
the question comes back, not maintained as product code (the benchmarks are in ``benchmarks/``).
"""
