"""The plain-array (`--to raw`) and Java (`--to java`) targets, checked against the JDK and the sources.

Every oracle is independent of weightport's writer: tensor sums and bytes come from the source file
read with h5py (or onnx), forward passes are compared with the outputs the source framework recorded.
Java is compiled once for the module (one JVM compiles every output folder through javax.tools).
Tests that run Java need a JDK (tests/conftest.py require: skipped per test without one, failed under CI=true).

Nothing here turns a failure into a skip: every fixture must read, every forward pass must reproduce the
recorded output, and the models --emit-forward refuses are listed in EMIT_FORWARD_REFUSALS with the reason
(a refusal not listed fails, and so does a listed model that generates).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from weightport.cli import main
from weightport.core.layout import parse_pattern
from tests.conftest import FIXTURES, ROOT, require


KERAS_CNNS = ["keras3/cnn_flatten_dense", "keras3/channels_first_cnn", "keras3/conv3d_grouped",
              "tf_keras2/cnn_sequential", "keras3/functional_residual", "keras3/functional_residual_flatten",
              "keras3/conv1d_rnn", "keras3/rnn_hard_sigmoid", "tf_keras2/rnn_stack", "tf_keras2/gru_reset_before",
              "tf_keras2/embedding_conv1d"]


def recorded(base: str) -> bool:
    return all(os.path.exists(os.path.join(FIXTURES, base + ext)) for ext in (".input.npy", ".output.npy"))


def source_file(base: str) -> str:
    for ext in (".h5", ".onnx", ".pkl", ".shared.p4.pkl", ".values.p5.pkl"):
        if os.path.exists(os.path.join(FIXTURES, base + ext)):
            return os.path.join(FIXTURES, base + ext)
    raise FileNotFoundError(base)


def spec_file(base: str) -> str | None:
    """A Theano pickle's NAME.spec.json (what each array is), which the user passes to the reader."""
    path = os.path.join(FIXTURES, base + ".spec.json")
    return path if os.path.exists(path) else None


def later_fixtures() -> list[str]:
    """Keras-on-Theano, Theano pickle and ONNX fixtures with recorded outputs, when they exist."""
    found = []
    for pattern in ("keras_theano/*.h5", "keras_legacy/*.h5", "onnx/*.onnx", "theano/*.input.npy"):
        for path in sorted(glob.glob(os.path.join(FIXTURES, pattern))):
            base = os.path.relpath(path, FIXTURES).replace(".input.npy", "")
            base = os.path.splitext(base)[0] if not path.endswith(".npy") else base
            if recorded(base):
                found.append(base)
    return found


def convert(*args: str) -> int:
    return main(["convert", *[str(a) for a in args]])


def read_options(base: str) -> dict[str, str]:
    """What a user would pass: the backend the fixture's record names (Keras 1 files store none), and a
    pickle's kernel semantics from NAME.semantics."""
    options = {}
    if spec_file(base):
        options["spec"] = spec_file(base)
    record = os.path.join(FIXTURES, base + ".json")
    if os.path.exists(record):
        with open(record, encoding="utf-8") as handle:
            backend = json.load(handle).get("backend")
        if backend in ("theano", "tensorflow"):
            options["assume_backend"] = backend
    semantics = os.path.join(FIXTURES, base + ".semantics")
    if os.path.exists(semantics):  # a pickle that cannot say which way its kernels go
        options["source_semantics"] = open(semantics, encoding="utf-8").read().strip()
    return options


def read_args(base: str) -> list[str]:
    return [item for key, value in read_options(base).items() for item in (f"--{key.replace('_', '-')}", value)]


def convert_fixture(base: str, out, args: list[str]) -> int:
    """``weightport convert`` of a fixture; through the API when the CLI cannot pass its read options."""
    if "spec" not in read_options(base):
        return convert(source_file(base), "-o", out, *read_args(base), *args)
    from weightport.api import load, save
    from weightport.core.errors import WeightportError
    flags = {"--to": "to", "--target-semantics": "target_semantics", "--layout": "layout",
             "--byte-order": "byte_order", "--dtype": "dtype"}
    options: dict = {"emit_forward": "--emit-forward" in args}
    for flag, name in flags.items():
        if flag in args:
            options[name] = args[args.index(flag) + 1]
    try:
        save(load(source_file(base), **read_options(base)), str(out), **options)
    except WeightportError:
        return 2
    return 0


FORWARD = [base for base in KERAS_CNNS if recorded(base)] + later_fixtures()

# fixture -> what --emit-forward's refusal must say.
ONNX_RNN = "an ONNX LSTM/GRU node (sequence-major input, directions on their own axis) is not supported"
EMIT_FORWARD_REFUSALS: dict[str, str] = {
    "onnx/gru_linear_before_reset": f"layer 'gru_linear_before_reset' (GRU): {ONNX_RNN}",
    "onnx/gru_reset_before": f"layer 'gru_reset_before' (GRU): {ONNX_RNN}",
    "onnx/lstm_bidirectional": f"layer 'lstm_bidirectional' (LSTM): {ONNX_RNN}",
}
GENERATED = [base for base in FORWARD if base not in EMIT_FORWARD_REFUSALS]  # a forward pass to run
NO_SPATIAL_KERNEL = {  # dense, batch norm and recurrent layers only: no flip to check
    "keras_theano/k1_batchnorm_dense", "keras_theano/k1_lstm", "keras_theano/k1_gru", "keras_theano/k2_gru_reset_before",
    "theano/theano_lstm", "keras3/rnn_hard_sigmoid", "tf_keras2/rnn_stack", "tf_keras2/gru_reset_before"}

# Output folders built for the module: (fixture, variant) -> convert arguments.
VARIANTS = {
    "corr": ["--to", "java", "--emit-forward"],                                      # big-endian float32 OIHW
    "conv": ["--to", "java", "--emit-forward", "--target-semantics", "convolution",  # a loop that flips
             "--layout", "HWIO", "--byte-order", "little"],
    "corr_hwio": ["--to", "raw", "--layout", "HWIO", "--byte-order", "little"],      # same bytes, not flipped
}
EXTRA = {  # dtype and byte-order coverage on the richest fixtures
    ("tf_keras2/cnn_sequential", "f64"): ["--to", "java", "--emit-forward", "--dtype", "float64", "--layout", "OHWI"],
    ("tf_keras2/cnn_sequential", "f16"): ["--to", "java", "--dtype", "float16", "--byte-order", "little"],
    ("keras3/cnn_flatten_dense", "f64"): ["--to", "java", "--emit-forward", "--dtype", "float64",
                                          "--layout", "HWIO,OI,CHW", "--byte-order", "little"],
    ("keras3/cnn_flatten_dense", "f16"): ["--to", "java", "--dtype", "float16"],
    ("keras3/cnn_flatten_dense", "little"): ["--to", "java", "--byte-order", "little"],
}

COMPILE_ALL = r'''
import java.io.File;
import java.util.ArrayList;
import java.util.List;
import javax.tools.JavaCompiler;
import javax.tools.ToolProvider;

public class CompileAll {
    static void sources(File dir, List<String> out) {
        for (File f : dir.listFiles()) {
            if (f.isDirectory()) {
                sources(f, out);
            } else if (f.getName().endsWith(".java")) {
                out.add(f.getPath());
            }
        }
    }

    public static void main(String[] dirs) {
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        int failed = 0;
        for (String dir : dirs) {
            List<String> args = new ArrayList<>(List.of("-Xlint:all", "-Werror", "-d", dir + "/classes"));
            sources(new File(dir, "src/main/java"), args);
            if (javac.run(null, null, null, args.toArray(new String[0])) != 0) {
                System.err.println("FAILED " + dir);
                failed++;
            }
        }
        System.exit(failed);
    }
}
'''

INDEX_PROBE = r'''
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.Locale;

public class IndexProbe {
    public static void main(String[] args) throws Exception {
        CLASSWeights w = CLASSWeights.load(Paths.get(args[0]));
        CLASSWeights.Tensor t = w.tensor(args[1]);
        int[] idx = new int[args.length - 2];
        for (int k = 2; k < args.length; k++) {
            idx[k - 2] = Integer.parseInt(args[k]);
        }
        System.out.println(Arrays.toString(t.shape) + " " + t.layout + " " + t.semantics + " " + t.index(idx)
                + " " + String.format(Locale.ROOT, "%.9e", t.get(idx)));
    }
}
'''


REFUSED: dict[str, str] = {}  # fixture -> why --emit-forward refused it, as observed by builds


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[tuple[str, str], str]:
    """Convert every (fixture, variant) once and compile all the Java in one JVM.

    A model --emit-forward cannot generate (only ever a later fixture, never KERAS_CNNS) is built
    without it, for the loader checks; its refusal is recorded in REFUSED, which
    test_emit_forward_refuses_exactly_the_listed_models compares with EMIT_FORWARD_REFUSALS."""
    require("jdk")
    root = tmp_path_factory.mktemp("raw_target")
    folders: dict[tuple[str, str], str] = {}
    jobs = {(base, name): args for base in FORWARD for name, args in VARIANTS.items()}
    jobs.update({key: args for key, args in EXTRA.items() if key[0] in FORWARD})
    for (base, name), args in jobs.items():
        out = root / f"{base.replace('/', '_')}_{name}"
        code = convert_fixture(base, out, args)
        if code != 0 and "--emit-forward" in args and base not in KERAS_CNNS:
            from weightport.api import load
            from weightport.core.errors import UnsupportedError
            from weightport.core.options import WriteOptions
            from weightport.formats import make_plan
            from weightport.formats.plain.java import generate_model
            from weightport.formats.plain.raw import flatten_orders, manifest_head, settings
            model = load(source_file(base), **read_options(base))
            options = WriteOptions()
            REFUSED[base] = f"convert exited {code}, yet the generator does not refuse the model"
            try:
                generate_model(model, make_plan(model, "raw", options), settings(options),
                               flatten_orders(model, settings(options).layout),
                               manifest_head(model, settings(options), flatten_orders(model, settings(options).layout)))
            except UnsupportedError as error:
                REFUSED[base] = error.problem
            args = [a for a in args if a != "--emit-forward"]
            code = convert_fixture(base, out, args)
        assert code == 0, (base, name)
        folders[(base, name)] = str(out)
    (root / "CompileAll.java").write_text(COMPILE_ALL)
    probe = folders[("keras3/cnn_flatten_dense", "conv")]
    with open(os.path.join(probe, "src", "main", "java", "IndexProbe.java"), "w") as handle:
        handle.write(INDEX_PROBE.replace("CLASS", java_class(probe)))
    java_dirs = sorted({d for d in folders.values() if os.path.isdir(os.path.join(d, "src", "main", "java"))})
    result = subprocess.run(["java", str(root / "CompileAll.java"), *java_dirs], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return folders


def classpath(folder: str) -> str:
    """A java target's project: its compiled classes and its resources folder."""
    return os.pathsep.join([os.path.join(folder, "classes"), os.path.join(folder, "src", "main", "resources")])


def java(folder: str, *args: str) -> str:
    result = subprocess.run(["java", "-cp", classpath(folder), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def manifest_path(folder: str) -> str:
    """manifest.json of a raw folder, or the java target's CLASS.json resource."""
    if os.path.exists(os.path.join(folder, "manifest.json")):
        return os.path.join(folder, "manifest.json")
    (found,) = glob.glob(os.path.join(folder, "src", "main", "resources", "**", "*.json"), recursive=True)
    return found


def weights_path(folder: str) -> str:
    return os.path.join(os.path.dirname(manifest_path(folder)), manifest_of(folder)["file"])


def manifest_of(folder: str) -> dict:
    with open(manifest_path(folder), encoding="utf-8") as handle:
        return json.load(handle)


def java_class(folder: str) -> str:
    return manifest_of(folder)["java"]["class"]


# ----------------------------------------------------------------------- the source, read independently

KERAS_VARIABLES = {
    "weight": ("kernel", "depthwise_kernel", "gamma", "alpha", "embeddings"), "bias": ("bias", "beta"),
    "running_mean": ("moving_mean",), "running_var": ("moving_variance",),
    "depthwise.weight": ("depthwise_kernel",), "pointwise.weight": ("pointwise_kernel",), "pointwise.bias": ("bias",),
}


KERAS1_NAMES = {"W": "kernel", "b": "bias", "running_std": "moving_variance", "running_mean": "moving_mean"}
RNN_VARIABLES = {"weight_ih_l0": ("kernel", 0), "weight_hh_l0": ("recurrent_kernel", 0),
                 "bias_ih_l0": ("bias", 0), "bias_hh_l0": ("bias", 1)}


def keras_arrays(path: str) -> dict[str, dict[str, np.ndarray]]:
    """layer name -> Keras variable name -> array, straight from the HDF5 file."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        for layer in group:
            variables: dict[str, np.ndarray] = {}

            def collect(name: str, obj, layer=layer) -> None:
                if isinstance(obj, h5py.Dataset):
                    variable = name.split("/")[-1].split(":")[0]
                    if variable.startswith(layer + "_"):  # Keras 1: conv_W, bn_running_std, lstm_W_i
                        variable = KERAS1_NAMES.get(variable[len(layer) + 1:], variable[len(layer) + 1:])
                    if "/backward_" in "/" + name:  # Bidirectional: the backward layer's
                        variable = "backward/" + variable
                    variables.setdefault(variable, obj[()])
            group[layer].visititems(collect)
            out[layer] = variables
    return out


def theano_arrays(base: str) -> dict[tuple[str, str], np.ndarray]:
    """(layer, canonical param) -> array, from the fixture's own NAME.savez.npz in NAME.spec.json's order.
    Lasagne batch norm keeps inv_std; the variance it stands for is 1 / inv_std**2 - epsilon."""
    spec = json.load(open(spec_file(base), encoding="utf-8"))
    arrays = np.load(os.path.join(FIXTURES, base + ".savez.npz"))
    values = iter(arrays[f"arr_{k}"] for k in range(len(arrays.files)))
    out: dict[tuple[str, str], np.ndarray] = {}
    for layer in spec["layers"]:
        for param in layer.get("params", {}).values():
            out[(layer["name"], param)] = next(values)
        gates = {param: out[(layer["name"], param)] for param in layer.get("params", {}).values()}
        for canonical, prefix in (("weight_ih_l0", "W_in_to_"), ("weight_hh_l0", "W_hid_to_"), ("bias_ih_l0", "b_")):
            blocks = [a.reshape(-1) for name, a in gates.items() if name.startswith(prefix)]
            if blocks:  # Lasagne keeps one array per gate; their sum is the sum of the stacked gate blocks
                out[(layer["name"], canonical)] = np.concatenate(blocks)
                if canonical == "bias_ih_l0":
                    out[(layer["name"], "bias_hh_l0")] = np.zeros(sum(b.size for b in blocks))
        if (layer["name"], "inv_std") in out:
            inv_std = out[(layer["name"], "inv_std")].astype(np.float64)
            out[(layer["name"], "running_var")] = 1.0 / inv_std ** 2 - layer.get("epsilon", 1e-4)
    return out


def onnx_constants(graph) -> dict[str, np.ndarray]:
    """Every constant value of an ONNX graph by name: initializers, Constant nodes, and Identity of either."""
    from onnx import numpy_helper
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(next(a.t for a in node.attribute if a.name == "value"))
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def onnx_array(path: str, layer: str, param: str) -> np.ndarray:
    """The ONNX graph's own array for a torch key, found through the node's inputs (not through weightport):
    the node named ``layer`` (or ``/layer/Op`` as torch.onnx.export names it); Conv/Gemm inputs 1 and 2;
    a MatMul named ``layer`` and the Add after it; an LSTM/GRU's W, R and B (B = [Wb, Rb]) per direction.
    Only sums are compared, which gate order and transposes leave alone."""
    import onnx
    graph = onnx.load(path).graph
    values = onnx_constants(graph)
    node = next(n for n in graph.node if n.name == layer or n.name.startswith(f"/{layer}/"))
    if node.op_type in ("LSTM", "GRU"):
        direction = 1 if param.endswith("_reverse") else 0
        name = param.removesuffix("_reverse")
        if name.startswith("weight"):
            return values[node.input[1 if name == "weight_ih_l0" else 2]][direction]
        bias = values[node.input[3]][direction]
        half = bias.shape[0] // 2
        return bias[:half] if name == "bias_ih_l0" else bias[half:]
    if node.op_type == "MatMul":
        if param == "weight":
            return values[node.input[1]]
        add = next(n for n in graph.node if n.op_type == "Add" and node.output[0] in n.input)
        return values[next(i for i in add.input if i in values)]
    if node.op_type == "Gemm":  # Y = alpha * A B + beta * C: the scales belong to the weights
        scale = {a.name: a.f for a in node.attribute}.get("alpha" if param == "weight" else "beta", 1.0)
        return values[node.input[{"weight": 1, "bias": 2}[param]]].astype(np.float64) * scale
    return values[node.input[{"weight": 1, "bias": 2}[param]]]


def source_array(path: str, layer: str, kind: str, param: str) -> np.ndarray:
    """The source's own array for a torch key's tensor (Keras HDF5, ONNX initializer, Theano savez)."""
    if path.endswith(".pkl"):
        base = os.path.relpath(path, FIXTURES).split(".")[0]
        arrays = theano_arrays(base)
        assert (layer, param) in arrays, f"{base}: the spec names no array for {layer}.{param}"
        return arrays[(layer, param)]
    if path.endswith(".onnx"):
        return onnx_array(path, layer, param)
    variables = keras_arrays(path)[layer]
    if param in RNN_VARIABLES and any(re.fullmatch(r"[WUb]_[a-z]", v) for v in variables):
        # Keras 1 keeps one array per gate: their sum is the sum of PyTorch's stacked gate blocks.
        letter = {"weight_ih_l0": "W", "weight_hh_l0": "U", "bias_ih_l0": "b", "bias_hh_l0": None}[param]
        gates = [a for v, a in sorted(variables.items()) if letter and re.fullmatch(rf"{letter}_[a-z]", v)]
        if letter is None:
            return np.zeros(sum(a.size for v, a in variables.items() if re.fullmatch(r"b_[a-z]", v)), np.float32)
        return np.concatenate([g.reshape(-1) for g in gates])
    prefix = "backward/" if param.endswith("_reverse") else ""  # PyTorch's reverse direction
    param = param.removesuffix("_reverse")
    if param in RNN_VARIABLES:
        name, row = RNN_VARIABLES[param]
        bias = variables.get(prefix + "bias")
        if name != "bias":
            return variables[prefix + name]
        if bias is None:
            raise KeyError(f"{layer}: no bias")
        if bias.ndim == 2:             # GRU reset_after: input and recurrent biases stacked
            return bias[row]
        return bias if row == 0 else np.zeros_like(bias)  # one Keras bias; PyTorch's second one is zero
    assert param in KERAS_VARIABLES, f"no Keras variable is known for parameter {param!r}: add it to KERAS_VARIABLES"
    names = KERAS_VARIABLES[param]
    for name in names:
        if name in variables:
            return variables[name]
    raise KeyError(f"{layer}: none of {names} in {sorted(variables)}")


def checked_sums(folder: str) -> dict[str, float]:
    lines = java(folder, java_class(folder) + "Check").splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}


def keras_sources() -> list[tuple[str, str]]:
    keys = [(base, name) for base in FORWARD for name in (("corr", "conv") if base in KERAS_CNNS else ("corr",))]
    keys += list(EXTRA)
    return [k for k in keys if k[0] in FORWARD]


# ----------------------------------------------------------------------------------------- (a) sums


@pytest.mark.parametrize("key", keras_sources(), ids="-".join)
def test_java_sums_equal_numpy_sums_of_the_source(builds, key):
    folder = builds[key]
    manifest = manifest_of(folder)
    sums = checked_sums(folder)
    assert list(sums) == [t["name"] for t in manifest["tensors"]]  # manifest order
    path = source_file(key[0])
    for entry in manifest["tensors"]:
        array = source_array(path, entry["layer"], entry["kind"], entry["param"])
        expected = np.asarray(array).astype(manifest["dtype"]).astype(np.float64)
        assert entry["shape"] and int(np.prod(entry["shape"])) == expected.size, entry["name"]
        scale = float(np.sum(np.abs(expected))) + 1e-30
        derived = entry["param"] == "running_var" and path.endswith(".pkl")  # computed from inv_std
        assert abs(sums[entry["name"]] - float(np.sum(expected))) <= (1e-6 if derived else 1e-9) * scale, entry["name"]


# -------------------------------------------------------------------------- (b) forward, (c) the flip


def java_forward(folder: str, base: str, weights_from: str | None = None) -> np.ndarray:
    """Run WeightportModel of ``folder`` (optionally on another folder's weights.bin) on the recorded input."""
    manifest = manifest_path(folder)
    if weights_from is not None:
        swapped = folder + "_swapped"
        if not os.path.exists(swapped):  # this folder's manifest, the other's bytes (and their SHA-256)
            os.makedirs(swapped)
            data = manifest_of(folder)
            digests = {t["name"]: t["sha256"] for t in manifest_of(weights_from)["tensors"]}
            for entry in data["tensors"]:
                entry["sha256"] = digests[entry["name"]]
            with open(os.path.join(swapped, os.path.basename(manifest)), "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            shutil.copy(weights_path(weights_from), os.path.join(swapped, data["file"]))
        manifest = os.path.join(swapped, os.path.basename(manifest))
    data = os.path.join(FIXTURES, base + ".input.npy")  # float32 or float64 .npy, read by the model's main
    lines = java(folder, java_class(folder), "--weights", manifest, data).splitlines()
    return np.array([[float(v) for v in line.split()] for line in lines])


def expected_output(base: str) -> np.ndarray:
    y = np.load(os.path.join(FIXTURES, base + ".output.npy"))
    return y.reshape(y.shape[0], -1).astype(np.float64)


def close(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max())))


FORWARD_RUNS = [(base, variant) for base in GENERATED for variant in ("corr", "conv")] + \
    [key for key, args in EXTRA.items() if "--emit-forward" in args and key[0] in GENERATED]


def test_emit_forward_refuses_exactly_the_listed_models(builds):
    assert sorted(REFUSED) == sorted(EMIT_FORWARD_REFUSALS), \
        "EMIT_FORWARD_REFUSALS must list exactly the models --emit-forward refuses: " + repr(REFUSED)
    for base, reason in EMIT_FORWARD_REFUSALS.items():
        assert reason in REFUSED[base], (base, REFUSED[base])


@pytest.mark.parametrize("base,variant", FORWARD_RUNS)
def test_emitted_forward_reproduces_the_recorded_output(builds, base, variant):
    assert base not in REFUSED, f"--emit-forward refused {base}: {REFUSED[base]}"
    got = java_forward(builds[(base, variant)], base)
    want = expected_output(base)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


def spatial_kernel(entry: dict) -> bool:
    """A kernel that a flip changes (some spatial axis longer than 1)."""
    groups = parse_pattern(entry["pattern"])
    return entry["semantics"] != "none" and any(n > 1 for g, n in zip(groups, entry["shape"]) if g and g[0] in "dhw")


@pytest.mark.parametrize("base", [base for base in GENERATED if base not in NO_SPATIAL_KERNEL])
def test_convolution_loop_needs_flipped_kernels(builds, base):
    """The generated loop for --target-semantics convolution reads kernels rotated 180 degrees: with the
    flipped weights it reproduces the source; given the same layout's correlation bytes (a missing flip)
    it does not."""
    assert base not in REFUSED, f"--emit-forward refused {base}: {REFUSED[base]}"
    conv, corr = builds[(base, "conv")], builds[(base, "corr_hwio")]
    assert any(spatial_kernel(t) for t in manifest_of(conv)["tensors"]), \
        f"{base}: no kernel with a spatial extent (list it in NO_SPATIAL_KERNEL)"
    source = open(os.path.join(conv, "src", "main", "java", java_class(conv) + ".java"), encoding="utf-8").read()
    assert "rotated 180 degrees" in source.split("private float[] run(")[1].split("public static void main")[0]
    assert close(java_forward(conv, base), expected_output(base))
    assert not close(java_forward(conv, base, weights_from=corr), expected_output(base))
    # The two folders differ exactly in the kernels with a spatial extent > 1.
    for a, b in zip(manifest_of(conv)["tensors"], manifest_of(corr)["tensors"]):
        assert (a["name"], a["offset"], a["layout"]) == (b["name"], b["offset"], b["layout"])
        assert (a["sha256"] != b["sha256"]) == spatial_kernel(a), a["name"]
        assert b["semantics"] == ("correlation" if a["semantics"] == "convolution" else "none")


def test_generated_model_refuses_weights_of_another_layout(builds, tmp_path):
    conv = builds[("keras3/cnn_flatten_dense", "conv")]
    other = builds[("keras3/cnn_flatten_dense", "corr")]
    np.save(tmp_path / "input.npy", np.zeros((1, 9, 11, 3), ">f4"))
    result = subprocess.run(["java", "-cp", classpath(conv), java_class(conv), "--weights", manifest_path(other),
                             str(tmp_path / "input.npy")], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "generated for" in result.stderr


# ------------------------------------------------------------------------ (d) byte order, dtype, layout

def stored(folder: str, name: str) -> np.ndarray:
    manifest = manifest_of(folder)
    entry = next(t for t in manifest["tensors"] if t["name"] == name)
    dtype = np.dtype(entry["dtype"]).newbyteorder(">" if manifest["byte_order"] == "big" else "<")
    data = open(weights_path(folder), "rb").read()
    return np.frombuffer(data, dtype, int(np.prod(entry["shape"])), entry["offset"]).reshape(entry["shape"])


def test_bytes_are_the_source_arrays_in_the_asked_layout(builds):
    """Independent numpy oracles (np.transpose on the HDF5 arrays) for each layout, semantics and dtype."""
    path = source_file("keras3/cnn_flatten_dense")
    kernel = keras_arrays(path)["conv_a"]["kernel"]          # Keras (kh, kw, in, out)
    dense = keras_arrays(path)["dense"]["kernel"]            # (h*w*c, out), rows in H, W, C order
    h, w, c = 2, 2, 5
    rows_chw = dense.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
    folder = lambda variant: builds[("keras3/cnn_flatten_dense", variant)]
    assert np.array_equal(stored(folder("corr"), "conv_a.weight"), kernel.transpose(3, 2, 0, 1))
    assert stored(folder("corr"), "conv_a.weight").dtype.byteorder == ">"
    assert np.array_equal(stored(folder("corr_hwio"), "conv_a.weight"), kernel)
    assert np.array_equal(stored(folder("conv"), "conv_a.weight"), kernel[::-1, ::-1])
    assert np.array_equal(stored(folder("corr"), "dense.weight"), rows_chw.T)
    assert np.array_equal(stored(folder("conv"), "dense.weight"), dense)   # HWIO: channels-last rows, IO
    assert np.array_equal(stored(folder("f64"), "dense.weight"), rows_chw.T.astype(np.float64))
    assert np.array_equal(stored(folder("f64"), "conv_a.weight"), kernel.astype(np.float64))
    assert np.array_equal(stored(folder("f16"), "conv_a.weight"), kernel.transpose(3, 2, 0, 1).astype(np.float16))
    depthwise = keras_arrays(source_file("tf_keras2/cnn_sequential"))["depthwise_conv2d"]["depthwise_kernel"]
    kh, kw, cin, mult = depthwise.shape
    f64 = builds[("tf_keras2/cnn_sequential", "f64")]  # OHWI: (i m) h w 1
    assert np.array_equal(stored(f64, "depthwise_conv2d.weight"),
                          depthwise.transpose(2, 3, 0, 1).reshape(cin * mult, kh, kw, 1))


def test_big_and_little_endian_hold_the_same_values(builds):
    big, little = builds[("keras3/cnn_flatten_dense", "corr")], builds[("keras3/cnn_flatten_dense", "little")]
    assert manifest_of(big)["byte_order"] == "big" and manifest_of(little)["byte_order"] == "little"
    raw_big = open(weights_path(big), "rb").read()
    raw_little = open(weights_path(little), "rb").read()
    assert raw_big != raw_little
    assert np.frombuffer(raw_big, ">u4").byteswap().tobytes() == raw_little  # every float32 byte-reversed
    for entry in manifest_of(big)["tensors"]:
        assert np.array_equal(stored(big, entry["name"]), stored(little, entry["name"]))
    assert checked_sums(big) == checked_sums(little)


def test_index_helper_reads_row_major_in_the_stored_layout(builds):
    folder = builds[("keras3/cnn_flatten_dense", "conv")]  # HWIO, convolution, little-endian float32
    kernel = keras_arrays(source_file("keras3/cnn_flatten_dense"))["conv_a"]["kernel"]
    line = java(folder, "IndexProbe", manifest_path(folder), "conv_a.weight", "1", "0", "2", "3").split()
    assert line[:4] == ["[3,", "2,", "3,", "4]"]
    assert line[-4:-1] == ["HWIO", "convolution", str(((1 * 2 + 0) * 3 + 2) * 4 + 3)]
    assert float(line[-1]) == pytest.approx(float(kernel[::-1, ::-1][1, 0, 2, 3]), rel=1e-7)


# ------------------------------------------------------------------------ (e) manifest and alignment


def schema() -> dict:
    text = open(os.path.join(ROOT, "docs", "targets", "plain-arrays.md"), encoding="utf-8").read()
    blocks = re.findall(r"^```json\n(.*?)^```", text, re.S | re.M)
    found = [json.loads(block) for block in blocks if '"$schema"' in block]
    assert len(found) == 1
    return found[0]


TYPES = {"object": dict, "array": list, "string": str, "integer": int, "null": type(None), "boolean": bool,
         "number": (int, float)}


def check_schema(value, rule: dict, where: str = "$") -> None:
    """The subset of JSON Schema the manifest schema uses."""
    if "const" in rule:
        assert value == rule["const"], where
    if "enum" in rule:
        assert value in rule["enum"], (where, value)
    if "type" in rule:
        kinds = rule["type"] if isinstance(rule["type"], list) else [rule["type"]]
        assert any(isinstance(value, TYPES[k]) and not (k == "integer" and isinstance(value, bool)) for k in kinds), \
            (where, value)
    if "minimum" in rule:
        assert value >= rule["minimum"], where
    if "pattern" in rule and value is not None:
        assert re.search(rule["pattern"], value), where
    if isinstance(value, dict):
        for key in rule.get("required", []):
            assert key in value, f"{where}.{key} missing"
        for key, sub in rule.get("properties", {}).items():
            if key in value:
                check_schema(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in rule:
        for k, item in enumerate(value):
            check_schema(item, rule["items"], f"{where}[{k}]")


def test_manifest_matches_the_documented_schema_and_the_bytes(builds):
    rule = schema()
    for folder in builds.values():
        manifest = manifest_of(folder)
        check_schema(manifest, rule)
        data = open(weights_path(folder), "rb").read()
        assert manifest["total_bytes"] == len(data)
        position = 0
        for entry in manifest["tensors"]:
            assert entry["offset"] % 8 == 0 and entry["offset"] >= position
            assert set(data[position:entry["offset"]]) <= {0}  # padding is zeros
            size = np.dtype(entry["dtype"]).itemsize
            assert entry["nbytes"] == int(np.prod(entry["shape"])) * size
            assert hashlib.sha256(data[entry["offset"]:entry["offset"] + entry["nbytes"]]).hexdigest() == \
                entry["sha256"]
            position = entry["offset"] + entry["nbytes"]
        assert position == len(data)
        assert "num_batches_tracked" not in " ".join(t["name"] for t in manifest["tensors"])


def test_manifest_names_are_the_torch_keys_and_layers_carry_runtime_attributes(builds, tmp_path):
    from safetensors.numpy import load_file
    torch_file = tmp_path / "m.safetensors"
    assert convert(source_file("tf_keras2/cnn_sequential"), "-o", torch_file) == 0
    torch_keys = [k for k in load_file(str(torch_file)) if not k.endswith("num_batches_tracked")]
    manifest = manifest_of(builds[("tf_keras2/cnn_sequential", "corr")])
    assert sorted(t["name"] for t in manifest["tensors"]) == sorted(torch_keys)
    layers = {layer["name"]: layer for layer in manifest["layers"]}
    depthwise = layers["depthwise_conv2d"]["attrs"]
    assert depthwise["pads"] == [[0, 1], [1, 1]] and depthwise["groups"] == 4 and depthwise["strides"] == [1, 1]
    assert layers["conv2d"]["attrs"]["activation"] == "relu" and layers["conv2d"]["attrs"]["dilations"] == [1, 1]
    assert layers["flatten"]["attrs"]["order"] == "chw"
    hwio = manifest_of(builds[("tf_keras2/cnn_sequential", "conv")])
    assert {layer["name"]: layer for layer in hwio["layers"]}["flatten"]["attrs"]["order"] == "hwc"
    assert hwio["layout"] == {"kernel": "HWIO", "dense": "IO", "feature_maps": "channels_last"}
    assert {t["name"]: t["layout"] for t in hwio["tensors"]}["dense.weight"] == "(HWC)O"
    assert {t["name"]: t["layout"] for t in hwio["tensors"]}["depthwise_conv2d.weight"] == "HW1(IM)"
    assert manifest["source"]["format"] == "keras_h5" and manifest["input"]["layout"] == "HWC"


# --------------------------------------------------------------------------- (f) never a partial output


def snapshot(folder) -> dict[str, tuple[bytes, int]]:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, folder)] = (open(path, "rb").read(), os.stat(path).st_mtime_ns)
    return out


SRC = os.path.join(FIXTURES, "keras3", "cnn_flatten_dense.h5")


@pytest.mark.parametrize("to", ["raw", "java"])
def test_existing_output_needs_force_and_is_left_untouched(tmp_path, capsys, to):
    out = tmp_path / "out"
    assert convert(SRC, "-o", out, "--to", to) == 0
    before = snapshot(out)
    assert convert(SRC, "-o", out, "--to", to, "--dtype", "float64") == 2
    assert "--force" in capsys.readouterr().err
    assert snapshot(out) == before
    assert convert(SRC, "-o", out, "--to", to, "--dtype", "float64", "--force") == 0
    assert manifest_of(str(out))["dtype"] == "float64"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging or old folders left behind


def test_force_never_deletes_a_folder_weightport_did_not_write(tmp_path, capsys):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    before = snapshot(mine)
    assert convert(SRC, "-o", mine, "--to", "raw", "--force") == 2
    assert "not written by weightport" in capsys.readouterr().err
    assert snapshot(mine) == before and sorted(os.listdir(tmp_path)) == ["project"]


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, capsys):
    import weightport.formats.plain.raw as raw
    real = raw.write_weights

    def explode(plan, path, chosen, *rest):
        real(plan, path, chosen, *rest)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(raw, "write_weights", explode)
    assert convert(SRC, "-o", tmp_path / "out", "--to", "java") == 2
    assert "No space left on device" in capsys.readouterr().err  # the failure is the one injected
    assert os.listdir(tmp_path) == []
    previous = tmp_path / "prev"
    monkeypatch.setattr(raw, "write_weights", real)
    assert convert(SRC, "-o", previous, "--to", "raw") == 0
    before = snapshot(previous)
    monkeypatch.setattr(raw, "write_weights", explode)
    assert convert(SRC, "-o", previous, "--to", "raw", "--force") == 2
    assert snapshot(previous) == before and os.listdir(tmp_path) == ["prev"]


def test_unsupported_forward_and_bad_options_are_usage_errors_before_writing(tmp_path, capsys):
    rnn = os.path.join(FIXTURES, "keras3", "conv1d_rnn.h5")
    onnx_rnn = os.path.join(FIXTURES, "onnx", "lstm_bidirectional.onnx")
    assert convert(onnx_rnn, "-o", tmp_path / "a", "--to", "java", "--emit-forward") == 2
    assert ONNX_RNN in capsys.readouterr().err
    assert convert(SRC, "-o", tmp_path / "b", "--to", "raw", "--emit-forward") == 2
    assert "--to java" in capsys.readouterr().err
    assert convert(SRC, "-o", tmp_path / "c", "--to", "raw", "--layout", "OIXW") == 2
    assert "--layout" in capsys.readouterr().err
    assert convert(SRC, "-o", tmp_path / "d", "--to", "raw", "--dtype", "int8") == 2
    assert os.listdir(tmp_path) == []
    # Without --emit-forward the recurrent model's tensors are all written (PyTorch layout and gate order).
    assert convert(rnn, "-o", tmp_path / "e", "--to", "raw", "--layout", "HWIO") == 0
    layouts = {t["name"]: t["layout"] for t in manifest_of(str(tmp_path / "e"))["tensors"]}
    assert layouts["conv1d.weight"] == "WIO" and layouts["lstm.weight_ih_l0"] == "OI" and layouts["out.weight"] == "IO"


def test_a_folder_name_with_a_dot_and_explain(tmp_path, capsys):
    assert convert(SRC, "-o", tmp_path / "model.v2", "--to", "raw") == 0
    assert (tmp_path / "model.v2" / "weights.bin").exists()
    capsys.readouterr()
    assert main(["explain", SRC, "--to", "java", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["tensors"]
    assert {r["key"]: r["target_layout"] for r in rows}["conv_a.weight"] == "OIHW"


def test_layout_option_parsing():
    from weightport.core.errors import UsageError
    from weightport.formats.plain.raw import kernel_target_pattern, parse_layout
    assert parse_layout("HWIO").kernel == ("S", "I", "O") and parse_layout("HWIO").dense == ("I", "O")
    assert parse_layout("OHWI").channels_last and not parse_layout("OIHW").channels_last
    assert parse_layout("hwio, oi, chw").dense == ("O", "I") and not parse_layout("HWIO,OI,CHW").channels_last
    assert parse_layout("IO").kernel is None and parse_layout("IO").dense == ("I", "O")
    assert kernel_target_pattern("o i d h w", parse_layout("HWIO").kernel) == "d h w i o"
    assert kernel_target_pattern("o i w", parse_layout("OHWI").kernel) == "o w i"
    assert kernel_target_pattern("(i m) 1 h w", parse_layout("HWIO").kernel) == "h w 1 (i m)"
    assert kernel_target_pattern("o i 1 1", parse_layout("OHWI").kernel) == "o 1 1 i"
    assert kernel_target_pattern("i o h w", parse_layout("HWIO").kernel) == "h w i o"
    for bad in ("OIWH", "OOHW", "OI HW X", "HIWO", "OI"[:1] + "HW"):
        with pytest.raises(UsageError):
            parse_layout(bad)


def test_float16_overflow_is_reported(tmp_path):
    from weightport.api import load, save
    from weightport.core.layout import Layout
    from weightport.core.model import Provenance, array_tensor
    model = load(SRC)
    layer = model.layer("dense")
    layer.tensors["bias"] = array_tensor("bias", np.full(6, 1e6, np.float32), Layout("o"), Provenance("test", "o"))
    result = save(model, str(tmp_path / "half"), to="raw", dtype="float16")
    assert any("dense.bias" in w and "infinite" in w for w in result.warnings)
    assert "dense.bias" in " ".join(manifest_of(str(tmp_path / "half"))["warnings"])


def test_models_listed_without_a_spatial_kernel_have_none(builds):
    for base in NO_SPATIAL_KERNEL:
        assert not any(spatial_kernel(t) for t in manifest_of(builds[(base, "conv")])["tensors"]), base
