"""The model's interface, owned here: tensor names, the input shape and the number of classes.

Every variant, the public model, the Triton configs, the clients and the load generators use these, so a client
built against one variant serves against any other.
"""

from __future__ import annotations

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_SHAPE = (3, 32, 32)  # channels, height, width: one image, float32 in [0, 1]
NUM_CLASSES = 10
INPUT_DATATYPE = "FP32"  # Triton's wire datatype of both tensors
