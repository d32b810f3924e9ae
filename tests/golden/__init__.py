"""Golden .cnnz files and the script that makes them (make_golden.py)."""
