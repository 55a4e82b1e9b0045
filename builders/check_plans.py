"""``python -m builders.check_plans``: before serving, check each TensorRT plan against the serving TensorRT.

A separate module so that ``-m`` does not re-import :mod:`builders.targets.tensorrt`, which the package already
imported.
"""

from builders.targets.tensorrt import main

if __name__ == "__main__":
    raise SystemExit(main())
