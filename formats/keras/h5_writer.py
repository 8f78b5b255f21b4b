"""Legacy Keras HDF5 weights (``save_weights`` layout) for ``model.load_weights`` of Keras 2 and 3
(``--to keras`` with a ``.h5`` output): kernels in Keras layouts, in the target semantics.
"""

from __future__ import annotations

import os

import h5py

from weightport.core.dtypes import widened
from weightport.core.atomic import atomic_path
from weightport.core.layout import CONVOLUTION
from weightport.core.model import Model
from weightport.core.options import WriteOptions
from weightport.core.plan import note_bfloat16_widened, plan_by_layer
from weightport.formats.keras import hdf5
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
                for item in items:
                    hdf5.create_dataset(group, item.key, widened(item.load()))
    return plan.warnings
