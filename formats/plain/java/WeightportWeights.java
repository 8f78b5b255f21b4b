/*@PACKAGE@*/
import java.io.BufferedInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.NoSuchElementException;

/**
 * The weights of one model converted by weightport, with no dependencies (Java 8 or later).
 *
 * <p>The weights are two files: a manifest (JSON: byte order, dtype, the layers and, per tensor, its
 * name, shape, layout, offset and SHA-256) and the binary file it names. Both ship as classpath
 * resources next to this class, named {@link #RESOURCE}{@code .json} and {@link #RESOURCE}{@code .bin}:
 * <pre>
 *   WeightportWeights w = WeightportWeights.load();            // from the classpath (a jar, a resources folder)
 *   WeightportWeights.Tensor k = w.tensor("conv_a.weight");   // its shape, layout and semantics
 *   float[] values = k.floats();                               // row-major in k.layout order
 * </pre>
 * Every load checks each tensor's SHA-256 against the manifest.
 */
public final class WeightportWeights {

    /** Base name of the classpath resources next to this class: RESOURCE.json and RESOURCE.bin. */
    public static final String RESOURCE = "@@RESOURCE@@";

    /** One named array: its values, shape and how its axes are ordered. */
    public static final class Tensor {
        /** The key the PyTorch target uses, e.g. {@code conv_a.weight}. */
        public final String name;
        /** The layer's name. */
        public final String layer;
        /** The layer's kind: conv, depthwise, dense, batchnorm, ... */
        public final String kind;
        /** float32, float64 or float16, as stored. */
        public final String dtype;
        /** Axis order, e.g. OIHW, HWIO, O(CHW). */
        public final String layout;
        /** The same with merged axes spelled out, e.g. {@code (i m) 1 h w}. */
        public final String pattern;
        /** correlation, convolution or none. */
        public final String semantics;
        /** SHA-256 of the stored bytes (checked when loaded). */
        public final String sha256;
        /** Length of each axis, in layout order. */
        public final int[] shape;
        private final float[] floats;
        private final double[] doubles;

        Tensor(Map<String, Object> entry, float[] floats, double[] doubles) {
            this.name = str(entry, "name");
            this.layer = str(entry, "layer");
            this.kind = str(entry, "kind");
            this.dtype = str(entry, "dtype");
            this.layout = str(entry, "layout");
            this.pattern = str(entry, "pattern");
            this.semantics = str(entry, "semantics");
            this.sha256 = str(entry, "sha256");
            this.shape = ints(entry.get("shape"));
            this.floats = floats;
            this.doubles = doubles;
        }

        /**
         * Number of elements.
         *
         * @return the product of the shape
         */
        public int size() {
            return floats.length;
        }

        /**
         * The values as float (float16 widened, float64 rounded), row-major in layout order.
         *
         * @return the array itself, not a copy
         */
        public float[] floats() {
            return floats;
        }

        /**
         * The values in double precision (exact for every stored dtype).
         *
         * @return a new array
         */
        public double[] doubles() {
            if (doubles != null) {
                return doubles.clone();
            }
            double[] out = new double[floats.length];
            for (int k = 0; k < out.length; k++) {
                out[k] = floats[k];
            }
            return out;
        }

        /**
         * Row-major position of one element.
         *
         * @param idx one index per axis of {@link #shape}, in layout order
         * @return the position in {@link #floats()}
         */
        public int index(int... idx) {
            if (idx.length != shape.length) {
                throw new IllegalArgumentException(name + " has " + shape.length + " axes, got " + idx.length + " indices");
            }
            int flat = 0;
            for (int axis = 0; axis < shape.length; axis++) {
                if (idx[axis] < 0 || idx[axis] >= shape[axis]) {
                    throw new IndexOutOfBoundsException(name + ": index " + Arrays.toString(idx) + " outside shape "
                            + Arrays.toString(shape));
                }
                flat = flat * shape[axis] + idx[axis];
            }
            return flat;
        }

        /**
         * One element, exactly as stored.
         *
         * @param idx one index per axis, in layout order
         * @return the element as a double
         */
        public double get(int... idx) {
            int k = index(idx);
            return doubles != null ? doubles[k] : floats[k];
        }

        /**
         * Sum of all elements in double precision, in storage order.
         *
         * @return the sum
         */
        public double sum() {
            double total = 0.0;
            for (int k = 0; k < floats.length; k++) {
                total += doubles != null ? doubles[k] : floats[k];
            }
            return total;
        }
    }

    /** An array read from a .npy file: its shape and its values, row-major, as float. */
    public static final class Array {
        /** Length of each axis. */
        public final int[] shape;
        /** The values, row-major. */
        public final float[] data;

        Array(int[] shape, float[] data) {
            this.shape = shape;
            this.data = data;
        }

        /**
         * The array split along its first axis (a batch into samples).
         *
         * @return one row-major array per index of the first axis
         */
        public float[][] rows() {
            int n = shape.length == 0 ? 1 : shape[0];
            int each = n == 0 ? 0 : data.length / n;
            float[][] out = new float[n][];
            for (int k = 0; k < n; k++) {
                out[k] = Arrays.copyOfRange(data, k * each, (k + 1) * each);
            }
            return out;
        }
    }

    /** The weights file's dtype: float32, float64 or float16. */
    public final String dtype;
    /** The weights file's byte order. */
    public final ByteOrder byteOrder;
    /** The parsed manifest (objects are maps, arrays lists, numbers Long or Double). */
    public final Map<String, Object> manifest;
    private final Map<String, Tensor> tensors = new LinkedHashMap<>();

    private WeightportWeights(Map<String, Object> manifest) {
        this.manifest = manifest;
        this.dtype = str(manifest, "dtype");
        this.byteOrder = order(str(manifest, "byte_order"));
    }

    /**
     * Load the weights from the classpath: the resources {@code RESOURCE.json} and {@code RESOURCE.bin}
     * in this class's package (inside a jar, or a resources folder on the classpath).
     *
     * @return the weights
     * @throws IOException if a resource is missing, unreadable or damaged
     */
    public static WeightportWeights load() throws IOException {
        Map<String, Object> manifest = parseManifest(resource(RESOURCE + ".json"), RESOURCE + ".json");
        try (InputStream weights = resource(fileName(manifest))) {
            return read(manifest, weights, fileName(manifest));
        }
    }

    /**
     * Load the weights from files: the manifest {@code RESOURCE.json} (or a raw target's
     * {@code manifest.json}) and the binary file it names beside it.
     *
     * @param path the manifest, or the folder holding it
     * @return the weights
     * @throws IOException if a file is missing, unreadable or damaged
     */
    public static WeightportWeights load(Path path) throws IOException {
        Path manifestFile = path;
        if (Files.isDirectory(path)) {
            manifestFile = path.resolve(RESOURCE + ".json");
            if (!Files.exists(manifestFile) && Files.exists(path.resolve("manifest.json"))) {
                manifestFile = path.resolve("manifest.json");
            }
        }
        Map<String, Object> manifest;
        try (InputStream in = Files.newInputStream(manifestFile)) {
            manifest = parseManifest(in, manifestFile.toString());
        }
        Path folder = manifestFile.toAbsolutePath().getParent();
        Path binary = folder.resolve(fileName(manifest));
        try (InputStream weights = Files.newInputStream(binary)) {
            return read(manifest, weights, binary.toString());
        }
    }

    /**
     * Load the weights from two streams, e.g. entries of an archive. The streams are read to the
     * end of the last tensor and not closed.
     *
     * @param manifest the manifest's JSON (UTF-8)
     * @param weights the binary file the manifest describes
     * @return the weights
     * @throws IOException if a stream is unreadable, too short or damaged
     */
    public static WeightportWeights load(InputStream manifest, InputStream weights) throws IOException {
        Map<String, Object> parsed = parseManifest(manifest, "manifest");
        return read(parsed, weights, "weights");
    }

    private static InputStream resource(String name) throws IOException {
        InputStream in = WeightportWeights.class.getResourceAsStream(name);
        if (in == null) {
            throw new IOException("resource " + name + " not found next to " + WeightportWeights.class.getName()
                    + " on the classpath; add the src/main/resources folder (or the jar holding it) to the classpath");
        }
        return in;
    }

    private static String fileName(Map<String, Object> manifest) throws IOException {
        String name = str(manifest, "file");
        if (name == null || name.isEmpty() || name.contains("/") || name.contains("\\") || name.startsWith(".")) {
            throw new IOException("manifest: the weights file name " + name + " is not a plain file name");
        }
        return name;
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> parseManifest(InputStream in, String where) throws IOException {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        byte[] buffer = new byte[1 << 16];
        try {
            for (int n = in.read(buffer); n >= 0; n = in.read(buffer)) {
                bytes.write(buffer, 0, n);
            }
        } finally {
            in.close();
        }
        Object parsed;
        try {
            parsed = parseJson(new String(bytes.toByteArray(), StandardCharsets.UTF_8));
        } catch (IllegalArgumentException e) {
            throw new IOException(where + ": " + e.getMessage(), e);
        }
        if (!(parsed instanceof Map)) {
            throw new IOException(where + ": not a JSON object");
        }
        return (Map<String, Object>) parsed;
    }

    @SuppressWarnings("unchecked")
    private static WeightportWeights read(Map<String, Object> manifest, InputStream stream, String where)
            throws IOException {
        WeightportWeights weights = new WeightportWeights(manifest);
        DataInputStream in = new DataInputStream(new BufferedInputStream(stream, 1 << 16));
        MessageDigest digest = sha256();
        long position = 0;
        for (Object item : (List<Object>) manifest.get("tensors")) {
            Map<String, Object> entry = (Map<String, Object>) item;
            String name = str(entry, "name");
            String dtype = str(entry, "dtype");
            long offset = num(entry, "offset");
            long nbytes = num(entry, "nbytes");
            long count = 1;
            for (int n : ints(entry.get("shape"))) {
                count *= n;
            }
            if (count * itemsize(dtype) != nbytes || offset < position || count > Integer.MAX_VALUE - 8) {
                throw new IOException(where + ": tensor " + name + " (" + nbytes + " bytes at " + offset
                        + ") does not fit its shape or follows the one before it");
            }
            skip(in, offset - position, where);
            byte[] raw = new byte[(int) nbytes];
            try {
                in.readFully(raw);
            } catch (EOFException e) {
                throw new IOException(where + ": ends inside tensor " + name + " (file truncated?)", e);
            }
            position = offset + nbytes;
            digest.reset();
            if (!hex(digest.digest(raw)).equals(str(entry, "sha256"))) {
                throw new IOException(where + ": tensor " + name + " does not match its sha256 (file damaged?)");
            }
            ByteBuffer bytes = ByteBuffer.wrap(raw).order(weights.byteOrder);
            float[] floats = new float[(int) count];
            double[] doubles = null;
            if (dtype.equals("float64")) {
                doubles = new double[(int) count];
                bytes.asDoubleBuffer().get(doubles);
                for (int k = 0; k < floats.length; k++) {
                    floats[k] = (float) doubles[k];
                }
            } else if (dtype.equals("float32")) {
                bytes.asFloatBuffer().get(floats);
            } else {
                for (int k = 0; k < floats.length; k++) {
                    floats[k] = halfToFloat(bytes.getShort(2 * k));
                }
            }
            weights.tensors.put(name, new Tensor(entry, floats, doubles));
        }
        return weights;
    }

    private static void skip(DataInputStream in, long count, String where) throws IOException {
        for (long left = count; left > 0; ) {
            int n = in.skipBytes((int) Math.min(left, 1 << 20));
            if (n <= 0) {
                throw new IOException(where + ": ends early (file truncated?)");
            }
            left -= n;
        }
    }

    private static MessageDigest sha256() throws IOException {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IOException(e);
        }
    }

    private static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder();
        for (byte b : bytes) {
            out.append(String.format(Locale.ROOT, "%02x", b & 0xff));
        }
        return out.toString();
    }

    /**
     * The tensor called {@code name}.
     *
     * @param name the PyTorch target's key, e.g. {@code conv_a.weight}
     * @return the tensor
     * @throws NoSuchElementException if there is none
     */
    public Tensor tensor(String name) {
        Tensor t = tensors.get(name);
        if (t == null) {
            throw new NoSuchElementException("no tensor " + name + "; the model has " + tensors.keySet());
        }
        return t;
    }

    /**
     * Whether a tensor is called {@code name}.
     *
     * @param name a tensor name
     * @return true if there is one
     */
    public boolean has(String name) {
        return tensors.containsKey(name);
    }

    /**
     * Every tensor, in manifest (file) order.
     *
     * @return an unmodifiable view
     */
    public Collection<Tensor> tensors() {
        return Collections.unmodifiableCollection(tensors.values());
    }

    /**
     * The manifest's layers: name, kind, attrs (strides, pads per side, dilations, groups, activation...).
     *
     * @return one map per layer, in graph order
     */
    @SuppressWarnings("unchecked")
    public List<Map<String, Object>> layers() {
        List<Map<String, Object>> out = new ArrayList<>();
        for (Object item : (List<Object>) manifest.get("layers")) {
            out.add((Map<String, Object>) item);
        }
        return out;
    }

    /**
     * Read a NumPy {@code .npy} file of float16/32/64 or int32/64 (e.g. token ids), either byte order, C order.
     *
     * @param file the .npy file
     * @return its shape and values as float
     * @throws IOException if the file is unreadable or not such an array
     */
    public static Array readNpy(Path file) throws IOException {
        try (InputStream in = Files.newInputStream(file)) {
            return readNpy(in);
        } catch (IOException e) {
            throw new IOException(file + ": " + e.getMessage(), e);
        }
    }

    /**
     * Read a NumPy {@code .npy} array from a stream (not closed).
     *
     * @param stream the bytes of a .npy file
     * @return its shape and values as float
     * @throws IOException if the stream is unreadable or not a float array in C order
     */
    public static Array readNpy(InputStream stream) throws IOException {
        DataInputStream in = new DataInputStream(new BufferedInputStream(stream));
        byte[] magic = new byte[8];
        in.readFully(magic);
        if ((magic[0] & 0xff) != 0x93 || magic[1] != 'N' || magic[2] != 'U' || magic[3] != 'M' || magic[4] != 'P'
                || magic[5] != 'Y') {
            throw new IOException("not a .npy file");
        }
        ByteBuffer length = ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN);
        if (magic[6] == 1) {
            byte[] two = new byte[2];
            in.readFully(two);
            length.put(two).put((byte) 0).put((byte) 0);
        } else {
            byte[] four = new byte[4];
            in.readFully(four);
            length.put(four);
        }
        byte[] headerBytes = new byte[length.getInt(0)];
        in.readFully(headerBytes);
        String header = new String(headerBytes, StandardCharsets.ISO_8859_1);
        String descr = npyField(header, "descr");
        if (npyField(header, "fortran_order").startsWith("True")) {
            throw new IOException("Fortran-order arrays are not supported; save with np.ascontiguousarray");
        }
        String shapeText = npyField(header, "shape");
        String inner = shapeText.substring(shapeText.indexOf('(') + 1, shapeText.indexOf(')'));
        List<Integer> dims = new ArrayList<>();
        for (String part : inner.split(",")) {
            if (!part.trim().isEmpty()) {
                dims.add(Integer.parseInt(part.trim()));
            }
        }
        int[] shape = new int[dims.size()];
        long count = 1;
        for (int k = 0; k < shape.length; k++) {
            shape[k] = dims.get(k);
            count *= shape[k];
        }
        String type = descr.replaceAll("['\"\\s]", "");
        ByteOrder byteOrder = type.startsWith(">") ? ByteOrder.BIG_ENDIAN : ByteOrder.LITTLE_ENDIAN;
        String kind = type.replaceAll("^[<>|=]", "");
        int item = kind.equals("f4") || kind.equals("i4") ? 4 : kind.equals("f8") || kind.equals("i8") ? 8
                : kind.equals("f2") ? 2 : 0;
        if (item == 0 || count * item > Integer.MAX_VALUE - 8) {
            throw new IOException("dtype " + type + " with " + count + " elements (float16/32/64 or int32/64 only)");
        }
        byte[] raw = new byte[(int) (count * item)];
        in.readFully(raw);
        ByteBuffer bytes = ByteBuffer.wrap(raw).order(byteOrder);
        float[] data = new float[(int) count];
        for (int k = 0; k < data.length; k++) {
            if (kind.startsWith("i")) {
                data[k] = item == 4 ? bytes.getInt(4 * k) : bytes.getLong(8 * k);
            } else {
                data[k] = item == 4 ? bytes.getFloat(4 * k) : item == 8 ? (float) bytes.getDouble(8 * k)
                        : halfToFloat(bytes.getShort(2 * k));
            }
        }
        return new Array(shape, data);
    }

    private static String npyField(String header, String key) throws IOException {
        int at = header.indexOf("'" + key + "'");
        if (at < 0) {
            throw new IOException("the .npy header has no " + key);
        }
        int colon = header.indexOf(':', at);
        int end = key.equals("shape") ? header.indexOf(')', colon) + 1 : header.indexOf(',', colon);
        return header.substring(colon + 1, end < 0 ? header.length() : end).trim();
    }

    /**
     * A byte order by its manifest name.
     *
     * @param name big or little
     * @return the byte order
     */
    public static ByteOrder order(String name) {
        if ("big".equals(name)) {
            return ByteOrder.BIG_ENDIAN;
        }
        if ("little".equals(name)) {
            return ByteOrder.LITTLE_ENDIAN;
        }
        throw new IllegalArgumentException("byte order " + name + " (use big or little)");
    }

    /**
     * Bytes per element of a dtype.
     *
     * @param dtype float64, float32 or float16
     * @return 8, 4 or 2
     */
    public static int itemsize(String dtype) {
        switch (String.valueOf(dtype)) {
            case "float64": return 8;
            case "float32": return 4;
            case "float16": return 2;
            default: throw new IllegalArgumentException("dtype " + dtype + " (use float32, float64 or float16)");
        }
    }

    /**
     * IEEE 754 half precision to float (exact).
     *
     * @param bits the half's 16 bits
     * @return the same number as a float
     */
    public static float halfToFloat(short bits) {
        int h = bits & 0xffff;
        int sign = (h & 0x8000) << 16;
        int exponent = (h >>> 10) & 0x1f;
        int mantissa = h & 0x3ff;
        if (exponent == 0x1f) {
            return Float.intBitsToFloat(sign | 0x7f800000 | (mantissa << 13));
        }
        if (exponent == 0) {
            float value = mantissa * 0x1p-24f;
            return sign != 0 ? -value : value;
        }
        return Float.intBitsToFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
    }

    static String str(Map<String, Object> map, String key) {
        Object value = map.get(key);
        return value == null ? null : value.toString();
    }

    static long num(Map<String, Object> map, String key) {
        return ((Number) map.get(key)).longValue();
    }

    @SuppressWarnings("unchecked")
    static int[] ints(Object list) {
        List<Object> items = (List<Object>) list;
        int[] out = new int[items.size()];
        for (int k = 0; k < out.length; k++) {
            out[k] = ((Number) items.get(k)).intValue();
        }
        return out;
    }

    /**
     * Parse JSON: objects become LinkedHashMap, arrays ArrayList, numbers Long or Double.
     *
     * @param text the JSON text
     * @return the value
     * @throws IllegalArgumentException if the text is not JSON
     */
    public static Object parseJson(String text) {
        Json parser = new Json(text);
        Object value = parser.value();
        parser.space();
        if (parser.at < text.length()) {
            throw parser.error("trailing characters");
        }
        return value;
    }

    private static final class Json {
        final String s;
        int at;

        Json(String s) {
            this.s = s;
        }

        IllegalArgumentException error(String what) {
            return new IllegalArgumentException("JSON: " + what + " at character " + at);
        }

        void space() {
            while (at < s.length() && Character.isWhitespace(s.charAt(at))) {
                at++;
            }
        }

        Object value() {
            space();
            if (at >= s.length()) {
                throw error("unexpected end");
            }
            char c = s.charAt(at);
            if (c == '{') {
                return object();
            }
            if (c == '[') {
                return array();
            }
            if (c == '"') {
                return string();
            }
            if (s.startsWith("true", at)) {
                at += 4;
                return Boolean.TRUE;
            }
            if (s.startsWith("false", at)) {
                at += 5;
                return Boolean.FALSE;
            }
            if (s.startsWith("null", at)) {
                at += 4;
                return null;
            }
            return number();
        }

        Map<String, Object> object() {
            Map<String, Object> out = new LinkedHashMap<>();
            at++;
            space();
            if (at < s.length() && s.charAt(at) == '}') {
                at++;
                return out;
            }
            while (true) {
                space();
                if (at >= s.length() || s.charAt(at) != '"') {
                    throw error("expected a key");
                }
                String key = string();
                space();
                expect(':');
                out.put(key, value());
                space();
                if (at < s.length() && s.charAt(at) == ',') {
                    at++;
                    continue;
                }
                expect('}');
                return out;
            }
        }

        List<Object> array() {
            List<Object> out = new ArrayList<>();
            at++;
            space();
            if (at < s.length() && s.charAt(at) == ']') {
                at++;
                return out;
            }
            while (true) {
                out.add(value());
                space();
                if (at < s.length() && s.charAt(at) == ',') {
                    at++;
                    continue;
                }
                expect(']');
                return out;
            }
        }

        void expect(char c) {
            if (at >= s.length() || s.charAt(at) != c) {
                throw error("expected '" + c + "'");
            }
            at++;
        }

        String string() {
            StringBuilder out = new StringBuilder();
            at++;
            while (true) {
                if (at >= s.length()) {
                    throw error("unterminated string");
                }
                char c = s.charAt(at++);
                if (c == '"') {
                    return out.toString();
                }
                if (c != '\\') {
                    out.append(c);
                    continue;
                }
                if (at >= s.length()) {
                    throw error("unterminated escape");
                }
                char e = s.charAt(at++);
                switch (e) {
                    case 'n': out.append('\n'); break;
                    case 't': out.append('\t'); break;
                    case 'r': out.append('\r'); break;
                    case 'b': out.append('\b'); break;
                    case 'f': out.append('\f'); break;
                    case 'u':
                        if (at + 4 > s.length()) {
                            throw error("bad \\u escape");
                        }
                        out.append((char) Integer.parseInt(s.substring(at, at + 4), 16));
                        at += 4;
                        break;
                    default: out.append(e);
                }
            }
        }

        Object number() {
            int start = at;
            while (at < s.length() && "+-0123456789.eE".indexOf(s.charAt(at)) >= 0) {
                at++;
            }
            String text = s.substring(start, at);
            if (text.isEmpty()) {
                throw error("unexpected character '" + s.charAt(at) + "'");
            }
            boolean real = text.indexOf('.') >= 0 || text.indexOf('e') >= 0 || text.indexOf('E') >= 0;
            try {
                return real ? (Object) Double.parseDouble(text) : (Object) Long.parseLong(text);
            } catch (NumberFormatException e) {
                try {
                    return Double.parseDouble(text);
                } catch (NumberFormatException again) {
                    throw error("bad number " + text);
                }
            }
        }
    }
}
