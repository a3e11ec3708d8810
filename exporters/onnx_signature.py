"""An ONNX model's inputs and outputs as Triton tensor declarations."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np

from portable_ep.exporters.triton_config import TensorDecl


def onnx_signature(path, batched: bool = True) -> Tuple[List[TensorDecl], List[TensorDecl]]:
    """Read I/O from the graph; symbolic dims become -1, the first dim is the batch when ``batched``."""
    import onnx
    from onnx import helper

    model = onnx.load(str(Path(path)), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def decls(values) -> List[TensorDecl]:
        result = []
        for value in values:
            if value.name in initializers:
                continue
            tensor_type = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
            result.append(TensorDecl(value.name, dtype, tuple(dims[1:] if batched else dims)))
        return result

    return decls(model.graph.input), decls(model.graph.output)
