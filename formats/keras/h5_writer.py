"""Legacy Keras HDF5 weights (``save_weights`` layout) for ``model.load_weights`` of Keras 2 and 3
(``--to keras`` with a ``.h5`` output): kernels in Keras layouts, in the target semantics.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from weightport.core.atomic import atomic_path, check_free_space
from weightport.core.dtypes import is_bfloat16
from weightport.core.layout import CONVOLUTION
from weightport.core.model import Model
from weightport.core.options import WriteOptions
from weightport.core.plan import note_bfloat16_widened, plan_by_layer
from weightport.core.progress import Progress
from weightport.formats.keras import hdf5
from weightport.formats.keras.hdf5 import HDF5_OVERHEAD
from weightport.formats.keras.layers import keras_plan, stacked_as_keras_layers


def write(model: Model, path: str, options: WriteOptions) -> list[str]:
    """Legacy Keras HDF5 weights (``save_weights`` layout) that ``model.load_weights`` of Keras 2/3 accepts.

    One group per canonical layer, in graph order, each with ``weight_names``
    in the Keras layer's weight order; kernels in Keras layouts.  Keras 3
    matches weighted layers by order, so the Keras model must list its layers in
    the same order as the source.  Datasets are written one at a time.
    """
    model = stacked_as_keras_layers(model)  # a torch RNN of num_layers N: N Keras layers
    plan = keras_plan(model, options)
    theano = options.target_semantics == CONVOLUTION
    by_layer = {layer.name: items for layer, items in plan_by_layer(plan)}
    # Keras's legacy HDF5 loader (Keras 2 and 3) reads no bfloat16
    note_bfloat16_widened(plan, "legacy Keras HDF5", "; name the output .weights.h5 to keep bfloat16")
    check_free_space(path, sum(item.nbytes * (2 if is_bfloat16(item.dtype) else 1) for item in plan.tensors)
                     + HDF5_OVERHEAD * (1 + len(model.layers) + len(plan.tensors)))
    datasets = hdf5.StreamedDatasets()
    with atomic_path(path, options.force) as temporary:
        with h5py.File(temporary, "w") as handle:
            handle.attrs["backend"] = "theano" if theano else "tensorflow"
            handle.attrs["keras_version"] = "2.3.1" if theano else "3.0.0"
            handle.attrs["weightport_source"] = f"{model.source.format}:{os.path.basename(model.source.path)}"
            names = [layer.name for layer in model.layers]
            hdf5.write_name_list(handle.attrs, "layer_names", names)  # chunked past 64 KiB, as Keras does
            for layer in model.layers:
                group = handle.create_group(layer.name)
                items = by_layer.get(layer.name, [])
                hdf5.write_name_list(group.attrs, "weight_names", [i.key for i in items])
                for item in items:  # bfloat16 widened to float32, exactly
                    datasets.add(group, item.key, item, np.dtype("<f4") if is_bfloat16(item.dtype) else None)
        with Progress(f"writing {os.path.basename(path)}", datasets.nbytes, options.quiet) as progress:
            datasets.fill(temporary, progress)
    return plan.warnings
