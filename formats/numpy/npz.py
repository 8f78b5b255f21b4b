"""NumPy ``.npz`` output with a JSON sidecar of layouts and semantics (``--to npz``).

Arrays are stored under the torch target's keys in canonical layouts (``OIHW``
for conv kernels, ``(out, in)`` for dense), streamed into the archive one at a
time.  ``--target-semantics convolution`` (the ``scipy`` preset) flips every
kernel so that ``scipy.signal.convolve2d`` reproduces the framework's output.
The sidecar ``NAME.npz.json`` records, per array, its layer, kind, layout,
semantics, shape and dtype, plus the layer attributes (strides, pads, ...).
Reading ``.npz`` files is the Theano/Lasagne reader's job.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np

from weightport.core.atomic import atomic_path, check_can_write
from weightport.core.describe import graph_metadata
from weightport.core.model import Model
from weightport.core.options import WriteOptions
from weightport.core.plan import Plan, canonical_plan, with_semantics

NAME = "npz"
DESCRIPTION = "NumPy .npz arrays with a JSON sidecar (scipy preset: --target-semantics convolution)"
EXTENSIONS = (".npz",)


def sniff(path: str) -> bool:
    return False  # written here, read by the Theano/Lasagne reader


def read(path: str, options) -> Model:
    raise NotImplementedError("npz files are read by weightport.formats.theano.reader")


def sidecar_path(path: str) -> str:
    return path + ".json"


def companion_outputs(path: str) -> list[str]:
    """The JSON sidecar written beside ``path``."""
    return [sidecar_path(path)]


def npz_plan(model: Model, options: WriteOptions) -> Plan:
    """Canonical (PyTorch) layouts under the torch keys, kernels in ``options.target_semantics``.

    With ``convolution`` (the ``scipy`` preset) each ``weight[o, i]`` is the kernel that
    ``scipy.signal.convolve2d(x[i], weight[o, i], 'valid')``, summed over ``i``, needs to reproduce
    the source framework's output.
    """
    return with_semantics(canonical_plan(model, options, "npz"), options.target_semantics)


def write(model: Model, path: str, options: WriteOptions) -> list[str]:
    """Write ``path`` (.npz) and ``path + '.json'`` atomically, one array at a time."""
    plan = npz_plan(model, options)
    check_can_write(sidecar_path(path), options.force)
    arrays = {}
    with atomic_path(path, options.force) as temporary:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for item in plan.tensors:
                array = item.load()
                with archive.open(f"{item.key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
                arrays[item.key] = {"layer": item.layer.name, "kind": item.layer.kind, "param": item.param,
                                    "shape": list(array.shape), "dtype": array.dtype.name,
                                    "layout": item.layout.compact(), "semantics": item.layout.semantics}
        sidecar = {"format": "weightport npz", "arrays": arrays, "graph": graph_metadata(model),
                   "warnings": plan.warnings}
        with atomic_path(sidecar_path(path), options.force) as side:
            with open(side, "w", encoding="utf-8") as handle:
                json.dump(sidecar, handle, indent=1)
    return plan.warnings
