"""Training and export of the CNNZ weights: ``python -m pillow_cnnz.train --help``."""
