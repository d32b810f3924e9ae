"""Training and export of the CNNZ weights, run from a checkout: ``python -m training --help``.

Not part of the installed package: the wheel ships ``pillow_cnnz`` only."""
