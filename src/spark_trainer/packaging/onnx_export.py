"""An ONNX export of the bundle's causal LM (input_ids -> logits), checked with onnxruntime.

torch's dynamo exporter (onnxscript) writes the graph; the example batch has two rows
so the batch dimension stays dynamic. Node stack-trace annotations, which name
process-local generated modules, are dropped so that the same weights export to the same
bytes. The export is verified against PyTorch on a fresh input shape.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from spark_trainer.errors import BundleError

TOLERANCE = 1e-4  # max absolute logit difference accepted between ONNX Runtime and PyTorch


def export(model_dir: Path, out_path: Path) -> dict[str, Any]:
    import numpy as np
    import onnx
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    class Logits(torch.nn.Module):  # a plain tensor in, a plain tensor out
        def __init__(self, lm) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, input_ids):
            return self.lm(input_ids=input_ids, use_cache=False).logits

    wrapper = Logits(model)
    example = torch.zeros((2, 8), dtype=torch.long)
    dims = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}}
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=["input_ids"],
                                    output_names=["logits"], dynamic_shapes=dims)
    proto = program.model_proto
    for node in _nodes(proto.graph):
        keep = [p for p in node.metadata_props if "stack_trace" not in p.key]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_path))

    probe = torch.arange(3 * 11, dtype=torch.long).reshape(3, 11) % model.config.vocab_size
    max_diff = _max_difference(out_path, probe.numpy(), wrapper(probe).detach().numpy())
    if not np.isfinite(max_diff) or max_diff > TOLERANCE:
        raise BundleError(f"the ONNX export of {model_dir} differs from PyTorch by {max_diff:.3g} (> {TOLERANCE}); "
                          "set package.onnx: false to bundle without it")
    return {"opset": int(proto.opset_import[0].version), "verified_within": TOLERANCE}


def _nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _nodes(attr.g)


def _max_difference(path: Path, input_ids, reference) -> float:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input_ids": input_ids})
    return float(np.abs(logits - reference).max())
