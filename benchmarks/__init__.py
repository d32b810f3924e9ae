"""The product benchmarks, run from the repository root: ``python -m benchmarks.<name> --help``.

``rd`` (rate-distortion against Pillow's codecs), ``speed`` (encode / decode time, start-up,
scaling, memory), ``gpu`` (batch throughput on CUDA), ``methods`` (encode effort), ``fuzz``
(the long decoder fuzzing run); ``bdrate``, ``fuzzing`` and ``_common`` are their helpers,
shared with the tests. Their results are in ``results/``. One-off studies live in
``experiments/``. Not part of the installed package.
"""
