"""A Triton Python-backend model as a user might already serve one, not built by tritune: a Hugging Face BERT text
classifier run in PyTorch (no ONNX), with its own tensor names and no batch dimension in its config (the batch is
the first of the tensor's own dims). Weights are random with a fixed seed: the tests measure serving, not accuracy.

``options.json`` beside this file in the version folder says ``quantize``: "none" or "int8" (PyTorch dynamic
quantization of the Linear layers). The same file serves the repository's two variants, whose configs are alike.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import BertConfig, BertForSequenceClassification


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "options.json")) as fh:
            options = json.load(fh)
        torch.manual_seed(0)
        torch.set_num_threads(1)
        bert = BertConfig(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
            num_labels=3,
        )
        model = BertForSequenceClassification(bert).eval()
        if options.get("quantize") == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model

    def execute(self, requests):
        responses = []
        for request in requests:
            ids = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "token_ids").as_numpy())
            with torch.no_grad():
                probs = torch.softmax(self.model(input_ids=ids).logits, dim=-1).numpy().astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("class_probs", probs)]))
        return responses
