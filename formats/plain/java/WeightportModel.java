/*@PACKAGE@*/
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

/**
 * The forward pass of a model converted by weightport, in float32 plain Java (8 or later, no dependencies).
 *
 * <p>Input: one sample is a {@code float[]} of {@link #INPUT_SIZE} values, the array of shape
 * {@link #inputShape()} in {@link #INPUT_LAYOUT} order (the order the source framework takes it, without
 * the batch axis), flattened row-major. Output: {@link #OUTPUT_SIZE} values, shape {@link #outputShape()},
 * in {@link #OUTPUT_LAYOUT} order. Feature maps are channels-first inside. The kernels' layout and
 * semantics ({@link #SEMANTICS}) are compiled in; the constructor refuses weights stored otherwise.
 * <pre>
 *   try (WeightportModel model = WeightportModel.load()) {     // weights from the classpath
 *       float[] y = model.forward(x);
 *   }
 * </pre>
 * An instance is safe to share between threads; {@code close()} stops its worker threads, if any.
 */
public final class WeightportModel implements AutoCloseable {
    /** The model file this class was generated from: its file name (format version, backend). */
    public static final String SOURCE = "@@SOURCE@@";
    /** SHA-256 of the model file this class was generated from. */
    public static final String SOURCE_SHA256 = "@@SOURCE_SHA256@@";
    /** How the kernels are stored: correlation (slid as stored) or convolution (read rotated 180 degrees). */
    public static final String SEMANTICS = "@@SEMANTICS@@";
    /** Axis order of one input sample, e.g. HWC (empty for a vector). */
    public static final String INPUT_LAYOUT = "@@INPUT_LAYOUT@@";
    /** Axis order of one output sample, e.g. CHW (empty for a vector). */
    public static final String OUTPUT_LAYOUT = "@@OUTPUT_LAYOUT@@";
    private static final int[] INPUT_SHAPE = {/*@INPUT_SHAPE@*/};
    private static final int[] OUTPUT_SHAPE = {/*@OUTPUT_SHAPE@*/};
    /** Number of values of one input sample. */
    public static final int INPUT_SIZE = size(INPUT_SHAPE);
    /** Number of values of one output sample. */
    public static final int OUTPUT_SIZE = size(OUTPUT_SHAPE);

    private final ExecutorService pool;
    private final int threads;
    /*@FIELDS@*/

    /**
     * The model on loaded weights, single-threaded.
     *
     * @param weights the weights this class was generated with
     */
    public WeightportModel(WeightportWeights weights) {
        this(weights, 1);
    }

    /**
     * The model on loaded weights.
     *
     * @param weights the weights this class was generated with
     * @param threads worker threads for one forward pass (1: the caller's thread only)
     */
    public WeightportModel(WeightportWeights weights, int threads) {
        if (threads < 1) {
            throw new IllegalArgumentException("threads must be at least 1, got " + threads);
        }
        this.threads = threads;
        this.pool = threads == 1 ? null : Executors.newFixedThreadPool(threads, task -> {
            Thread thread = new Thread(task, "weightport-forward");
            thread.setDaemon(true);
            return thread;
        });
        /*@LOADS@*/
    }

    /**
     * The model with its weights from the classpath (the resources next to {@link WeightportWeights}).
     *
     * @return the model, single-threaded
     * @throws IOException if the weights are missing or damaged
     */
    public static WeightportModel load() throws IOException {
        return new WeightportModel(WeightportWeights.load());
    }

    /**
     * The model with its weights from the classpath, using worker threads.
     *
     * @param threads worker threads for one forward pass
     * @return the model
     * @throws IOException if the weights are missing or damaged
     */
    public static WeightportModel load(int threads) throws IOException {
        return new WeightportModel(WeightportWeights.load(), threads);
    }

    /**
     * The model with its weights from files.
     *
     * @param path the manifest (.json), or the folder holding it and the .bin file
     * @return the model, single-threaded
     * @throws IOException if the weights are missing or damaged
     */
    public static WeightportModel load(Path path) throws IOException {
        return new WeightportModel(WeightportWeights.load(path));
    }

    /**
     * The model with its weights from two streams (not closed).
     *
     * @param manifest the manifest's JSON
     * @param weights the binary weights file
     * @return the model, single-threaded
     * @throws IOException if the weights are unreadable or damaged
     */
    public static WeightportModel load(InputStream manifest, InputStream weights) throws IOException {
        return new WeightportModel(WeightportWeights.load(manifest, weights));
    }

    /**
     * Shape of one input sample, in {@link #INPUT_LAYOUT} order.
     *
     * @return a new array
     */
    public static int[] inputShape() {
        return INPUT_SHAPE.clone();
    }

    /**
     * Shape of one output sample, in {@link #OUTPUT_LAYOUT} order.
     *
     * @return a new array
     */
    public static int[] outputShape() {
        return OUTPUT_SHAPE.clone();
    }

    /**
     * One sample through the model.
     *
     * @param input {@link #INPUT_SIZE} values, shape {@link #inputShape()} in {@link #INPUT_LAYOUT} order
     * @return {@link #OUTPUT_SIZE} values, shape {@link #outputShape()} in {@link #OUTPUT_LAYOUT} order
     */
    public float[] forward(float[] input) {
        return run(input, pool, threads);
    }

    /**
     * Several samples through the model (spread over the worker threads, if any).
     *
     * @param batch samples, each as {@link #forward(float[])} takes it
     * @return the outputs, in the same order
     */
    public float[][] forward(float[][] batch) {
        float[][] out = new float[batch.length][];
        if (pool == null || batch.length < 2) {
            for (int n = 0; n < batch.length; n++) {
                out[n] = run(batch[n], pool, threads);
            }
            return out;
        }
        parallel(pool, batch.length, batch.length, (from, to) -> {
            for (int n = from; n < to; n++) {
                out[n] = run(batch[n], null, 1);
            }
        });
        return out;
    }

    /** Stops the worker threads, if any. */
    @Override
    public void close() {
        if (pool != null) {
            pool.shutdown();
        }
    }

    private float[] run(float[] input, ExecutorService par, int tasks) {
        if (input.length != INPUT_SIZE) {
            throw new IllegalArgumentException("input has " + input.length + " values, expected " + INPUT_SIZE
                    + " " + Arrays.toString(INPUT_SHAPE));
        }
        float[] x = input.clone();
        /*@BODY@*/
        return x;
    }

    /**
     * Runs the model on a .npy file (float16/32/64, either byte order) holding one sample or a batch
     * (first axis), printing one line of {@code %.9e} values per sample.
     * Arguments: {@code [--weights PATH] [--threads N] INPUT.npy}; without --weights the weights come
     * from the classpath.
     *
     * @param args the arguments
     * @throws Exception if the weights or the input cannot be read
     */
    public static void main(String[] args) throws Exception {
        Path weightsPath = null;
        int threads = 1;
        String input = null;
        for (int k = 0; k < args.length; k++) {
            if (args[k].equals("--weights") && k + 1 < args.length) {
                weightsPath = Paths.get(args[++k]);
            } else if (args[k].equals("--threads") && k + 1 < args.length) {
                threads = Integer.parseInt(args[++k]);
            } else {
                input = args[k];
            }
        }
        if (input == null) {
            System.err.println("usage: java WeightportModel [--weights PATH] [--threads N] INPUT.npy");
            System.exit(2);
        }
        WeightportWeights.Array array = WeightportWeights.readNpy(Paths.get(input));
        if (array.data.length == 0 || array.data.length % INPUT_SIZE != 0) {
            System.err.println(input + ": " + Arrays.toString(array.shape) + " is not a whole number of samples of "
                    + Arrays.toString(INPUT_SHAPE));
            System.exit(2);
        }
        float[][] batch = new float[array.data.length / INPUT_SIZE][];
        for (int n = 0; n < batch.length; n++) {
            batch[n] = Arrays.copyOfRange(array.data, n * INPUT_SIZE, (n + 1) * INPUT_SIZE);
        }
        WeightportWeights weights = weightsPath == null ? WeightportWeights.load() : WeightportWeights.load(weightsPath);
        StringBuilder out = new StringBuilder();
        try (WeightportModel model = new WeightportModel(weights, threads)) {
            for (float[] y : model.forward(batch)) {
                for (int k = 0; k < y.length; k++) {
                    out.append(k == 0 ? "" : " ").append(String.format(Locale.ROOT, "%.9e", y[k]));
                }
                out.append('\n');
            }
        }
        System.out.print(out);
    }

    // ---- layers: maps are channels-first (C, D, H, W) with D = H = 1 for lower ranks ----

    /** A range of indices [from, to) to compute. */
    interface Range {
        void run(int from, int to);
    }

    /** Splits [0, n) into up to {@code tasks} ranges run on {@code par} (or here when par is null). */
    static void parallel(ExecutorService par, int tasks, int n, Range body) {
        int parts = par == null ? 1 : Math.min(tasks, n);
        if (parts <= 1) {
            body.run(0, n);
            return;
        }
        List<Future<?>> futures = new ArrayList<>();
        for (int t = 0; t < parts; t++) {
            int from = (int) ((long) n * t / parts), to = (int) ((long) n * (t + 1) / parts);
            futures.add(par.submit(() -> body.run(from, to)));
        }
        try {
            for (Future<?> future : futures) {
                future.get();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException(e);
        } catch (ExecutionException e) {
            throw new IllegalStateException(e.getCause());
        }
    }

    private static float[] tensor(WeightportWeights weights, String name, String pattern, String semantics,
                                  int[] shape) {
        WeightportWeights.Tensor t = weights.tensor(name);
        if (!t.pattern.equals(pattern) || !t.semantics.equals(semantics) || !Arrays.equals(t.shape, shape)) {
            throw new IllegalStateException(name + " is stored " + t.pattern + " " + t.semantics + " "
                    + Arrays.toString(t.shape) + " but this model was generated for " + pattern + " " + semantics
                    + " " + Arrays.toString(shape) + "; generate both with the same --layout and --target-semantics");
        }
        return t.floats();
    }

    static int size(int[] shape) {
        int n = 1;
        for (int v : shape) {
            n *= v;
        }
        return n;
    }

    static void check(float[] x, int expected, String layer) {
        if (x.length != expected) {
            throw new IllegalStateException(layer + ": " + x.length + " values, expected " + expected);
        }
    }

    static int outSize(int n, int k, int stride, int dilation, int before, int after) {
        return (n + before + after - (k - 1) * dilation - 1) / stride + 1;
    }

    /**
     * A convolution kernel repacked as (o, i, kd, kh, kw), contiguous, read rotated 180 degrees when flip
     * (stored for true convolution). Stored element (o, i, kd, kh, kw), i within o's group, is at
     * o*ws[0] + i*ws[1] + kd*ws[2] + kh*ws[3] + kw*ws[4].
     */
    static float[] packConv(float[] w, int[] ws, int out, int cg, int[] k, boolean flip) {
        float[] packed = new float[out * cg * k[0] * k[1] * k[2]];
        int at = 0;
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < cg; i++) {
                for (int kd = 0; kd < k[0]; kd++) {
                    int ad = flip ? k[0] - 1 - kd : kd;
                    for (int kh = 0; kh < k[1]; kh++) {
                        int ah = flip ? k[1] - 1 - kh : kh;
                        for (int kw = 0; kw < k[2]; kw++) {
                            int aw = flip ? k[2] - 1 - kw : kw;
                            packed[at++] = w[o * ws[0] + i * ws[1] + ad * ws[2] + ah * ws[3] + aw * ws[4]];
                        }
                    }
                }
            }
        }
        return packed;
    }

    /** A dense weight repacked as rows (in) of out values: element (o, i) stored at o*ws[0] + i*ws[1]. */
    static float[][] packDense(float[] w, int[] ws, int out, int in) {
        float[][] packed = new float[in][out];
        for (int i = 0; i < in; i++) {
            for (int o = 0; o < out; o++) {
                packed[i][o] = w[o * ws[0] + i * ws[1]];
            }
        }
        return packed;
    }

    /**
     * Convolution of x (in = {C, D, H, W}) with a packed kernel (packConv), out channels in groups:
     * per group, im2col then a blocked matrix multiply. pads = {d0, d1, h0, h1, w0, w1}.
     */
    static float[] conv(float[] x, int[] in, float[] w, float[] bias, int out, int groups, int[] k, int[] stride,
                        int[] dilation, int[] pads, ExecutorService par, int tasks) {
        int c0 = in[0];
        int od = outSize(in[1], k[0], stride[0], dilation[0], pads[0], pads[1]);
        int oh = outSize(in[2], k[1], stride[1], dilation[1], pads[2], pads[3]);
        int ow = outSize(in[3], k[2], stride[2], dilation[2], pads[4], pads[5]);
        int n = od * oh * ow, cg = c0 / groups, og = out / groups, depth = cg * k[0] * k[1] * k[2];
        boolean direct = k[0] * k[1] * k[2] == 1 && stride[0] * stride[1] * stride[2] == 1
                && pads[0] + pads[1] + pads[2] + pads[3] + pads[4] + pads[5] == 0;
        float[] y = new float[out * n];
        float[][] rows = new float[og][];
        for (int g = 0; g < groups; g++) {
            float[][] col = new float[depth][n];
            if (direct) {
                for (int c = 0; c < cg; c++) {
                    System.arraycopy(x, (g * cg + c) * n, col[c], 0, n);
                }
            } else {
                im2col(x, in, g * cg, cg, k, stride, dilation, pads, od, oh, ow, col);
            }
            for (int o = 0; o < og; o++) {
                rows[o] = new float[n];
                if (bias != null) {
                    Arrays.fill(rows[o], bias[g * og + o]);
                }
            }
            matmul(w, g * og * depth, col, rows, og, depth, n, par, tasks);
            for (int o = 0; o < og; o++) {
                System.arraycopy(rows[o], 0, y, (g * og + o) * n, n);
            }
        }
        return y;
    }

    /** Rows (c, kd, kh, kw) of the input windows, columns the output positions; zero outside the input. */
    static void im2col(float[] x, int[] in, int c0, int cg, int[] k, int[] stride, int[] dilation, int[] pads,
                       int od, int oh, int ow, float[][] col) {
        int d0 = in[1], h0 = in[2], w0 = in[3], row = 0;
        for (int c = c0; c < c0 + cg; c++) {
            for (int kd = 0; kd < k[0]; kd++) {
                for (int kh = 0; kh < k[1]; kh++) {
                    for (int kw = 0; kw < k[2]; kw++, row++) {
                        float[] line = col[row];
                        int at = 0;
                        for (int zd = 0; zd < od; zd++) {
                            int id = zd * stride[0] - pads[0] + kd * dilation[0];
                            for (int zh = 0; zh < oh; zh++, at += ow) {
                                int ih = zh * stride[1] - pads[2] + kh * dilation[1];
                                if (id < 0 || id >= d0 || ih < 0 || ih >= h0) {
                                    continue;  // the row is zeros already
                                }
                                int src = ((c * d0 + id) * h0 + ih) * w0, shift = kw * dilation[2] - pads[4];
                                for (int zw = 0; zw < ow; zw++) {
                                    int iw = zw * stride[2] + shift;
                                    line[at + zw] = iw >= 0 && iw < w0 ? x[src + iw] : 0f;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /**
     * c[i] += a[i][k] * b[k] for the rows c[0..m) (a row-major at aOff, b and c arrays of rows). The columns
     * are split over the worker threads; see {@link #columns} for the blocking.
     */
    static void matmul(float[] a, int aOff, float[][] b, float[][] c, int m, int depth, int n, ExecutorService par,
                       int tasks) {
        int parts = par == null || (long) m * depth * n < 1 << 18 ? 1 : tasks;
        parallel(parts > 1 ? par : null, parts, n, (from, to) -> columns(a, aOff, b, c, m, depth, from, to));
    }

    /**
     * Columns [from, to) of the product, in blocks of 1024 (4 KB per row, so a block of c's row and four
     * of b's stay in L1 cache): each row of c takes four rows of b per pass. Every array in the inner loop
     * is indexed by the same j, which is what lets the JIT vectorize it.
     */
    static void columns(float[] a, int aOff, float[][] b, float[][] c, int m, int depth, int from, int to) {
        for (int j0 = from; j0 < to; j0 += 1024) {
            int j1 = Math.min(to, j0 + 1024);
            for (int i = 0; i < m; i++) {
                float[] t = c[i];
                int r = aOff + i * depth, p = 0;
                for (; p + 3 < depth; p += 4) {
                    float a0 = a[r + p], a1 = a[r + p + 1], a2 = a[r + p + 2], a3 = a[r + p + 3];
                    float[] b0 = b[p], b1 = b[p + 1], b2 = b[p + 2], b3 = b[p + 3];
                    for (int j = j0; j < j1; j++) {
                        t[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j];
                    }
                }
                for (; p < depth; p++) {
                    float a0 = a[r + p];
                    float[] b0 = b[p];
                    for (int j = j0; j < j1; j++) {
                        t[j] += a0 * b0[j];
                    }
                }
            }
        }
    }

    /** Fully connected with a packed (in, out) weight (packDense). */
    static float[] dense(float[] x, float[][] w, float[] bias, int out, ExecutorService par, int tasks) {
        float[] y = bias == null ? new float[out] : bias.clone();
        matmul(x, 0, w, new float[][]{y}, 1, x.length, out, par, tasks);
        return y;
    }

    /** A Dense applied to every step of a (steps, features) sequence, with a packed (in, out) weight. */
    static float[] perStepDense(float[] x, int steps, float[][] w, float[] bias, int out, ExecutorService par,
                                int tasks) {
        float[][] rows = new float[steps][];
        for (int t = 0; t < steps; t++) {
            rows[t] = bias == null ? new float[out] : bias.clone();
        }
        matmul(x, 0, w, rows, steps, x.length / steps, out, par, tasks);
        float[] y = new float[steps * out];
        for (int t = 0; t < steps; t++) {
            System.arraycopy(rows[t], 0, y, t * out, out);
        }
        return y;
    }

    /**
     * Transposed convolution: every input element x[c, i] adds x * w to y[o, i*stride - pad + k*dilation].
     * Weight element (c, o, kd, kh, kw), c an input channel and o within its group, is at
     * o*ws[0] + c*ws[1] + kd*ws[2] + kh*ws[3] + kw*ws[4]. pads (cropped from the full output) = {d0, d1, h0, h1, w0, w1};
     * size = {OD, OH, OW}. flip: the kernel is stored for true convolution and read rotated 180 degrees.
     */
    static float[] convTranspose(float[] x, int[] in, float[] w, int[] ws, float[] bias, int out, int groups,
                                 int[] k, int[] stride, int[] dilation, int[] pads, int[] size, boolean flip) {
        int c0 = in[0], d0 = in[1], h0 = in[2], w0 = in[3];
        int od = size[0], oh = size[1], ow = size[2];
        int cg = c0 / groups, og = out / groups;
        float[] y = new float[out * od * oh * ow];
        for (int o = 0; o < out; o++) {
            Arrays.fill(y, o * od * oh * ow, (o + 1) * od * oh * ow, bias == null ? 0f : bias[o]);
        }
        for (int c = 0; c < c0; c++) {
            int g = c / cg;
            for (int zd = 0; zd < d0; zd++) {
                for (int zh = 0; zh < h0; zh++) {
                    for (int zw = 0; zw < w0; zw++) {
                        float v = x[((c * d0 + zd) * h0 + zh) * w0 + zw];
                        for (int j = 0; j < og; j++) {
                            int o = g * og + j;
                            for (int kd = 0; kd < k[0]; kd++) {
                                int id = zd * stride[0] - pads[0] + kd * dilation[0];
                                if (id < 0 || id >= od) {
                                    continue;
                                }
                                int ad = flip ? k[0] - 1 - kd : kd;
                                for (int kh = 0; kh < k[1]; kh++) {
                                    int ih = zh * stride[1] - pads[2] + kh * dilation[1];
                                    if (ih < 0 || ih >= oh) {
                                        continue;
                                    }
                                    int ah = flip ? k[1] - 1 - kh : kh;
                                    for (int kw = 0; kw < k[2]; kw++) {
                                        int iw = zw * stride[2] - pads[4] + kw * dilation[2];
                                        if (iw < 0 || iw >= ow) {
                                            continue;
                                        }
                                        int aw = flip ? k[2] - 1 - kw : kw;
                                        y[((o * od + id) * oh + ih) * ow + iw]
                                                += v * w[j * ws[0] + c * ws[1] + ad * ws[2] + ah * ws[3] + aw * ws[4]];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return y;
    }

    /**
     * Max or average pooling to the output size {@code out} (d, h, w: rounded down, or up for Caffe / Torch7's
     * ceil mode, whose last window may pass the padded input); padded positions are skipped, and the average
     * counts them only if countPadding, within the padded input (Caffe's and PyTorch's rule).
     */
    static float[] pool(float[] x, int[] in, int[] k, int[] stride, int[] pads, int[] out, boolean max,
                        boolean countPadding) {
        int c0 = in[0], d0 = in[1], h0 = in[2], w0 = in[3];
        int od = out[0], oh = out[1], ow = out[2];
        float[] y = new float[c0 * od * oh * ow];
        for (int c = 0; c < c0; c++) {
            for (int zd = 0; zd < od; zd++) {
                for (int zh = 0; zh < oh; zh++) {
                    for (int zw = 0; zw < ow; zw++) {
                        float best = Float.NEGATIVE_INFINITY;
                        double sum = 0.0;
                        int n = 0;
                        for (int kd = 0; kd < k[0]; kd++) {
                            int id = zd * stride[0] - pads[0] + kd;
                            for (int kh = 0; kh < k[1]; kh++) {
                                int ih = zh * stride[1] - pads[2] + kh;
                                for (int kw = 0; kw < k[2]; kw++) {
                                    int iw = zw * stride[2] - pads[4] + kw;
                                    if (id < 0 || id >= d0 || ih < 0 || ih >= h0 || iw < 0 || iw >= w0) {
                                        continue;
                                    }
                                    float v = x[((c * d0 + id) * h0 + ih) * w0 + iw];
                                    best = Math.max(best, v);
                                    sum += v;
                                    n++;
                                }
                            }
                        }
                        int window = windowSize(zd * stride[0] - pads[0], k[0], d0 + pads[1])
                                * windowSize(zh * stride[1] - pads[2], k[1], h0 + pads[3])
                                * windowSize(zw * stride[2] - pads[4], k[2], w0 + pads[5]);
                        y[((c * od + zd) * oh + zh) * ow + zw] = max ? best
                                : (float) (sum / (countPadding ? window : n));
                    }
                }
            }
        }
        return y;
    }

    /** The positions of a pooling window starting at {@code start} that lie before {@code end} (the padded input's end). */
    static int windowSize(int start, int k, int end) {
        return Math.min(start + k, end) - start;
    }

    static float[] globalPool(float[] x, int channels, boolean max) {
        int s0 = x.length / channels;
        float[] y = new float[channels];
        for (int c = 0; c < channels; c++) {
            float best = Float.NEGATIVE_INFINITY;
            double sum = 0.0;
            for (int s = 0; s < s0; s++) {
                best = Math.max(best, x[c * s0 + s]);
                sum += x[c * s0 + s];
            }
            y[c] = max ? best : (float) (sum / s0);
        }
        return y;
    }

    /** Inference batch norm per channel: (x - mean) / sqrt(var + eps) * gamma + beta. */
    static float[] batchnorm(float[] x, int channels, float[] gamma, float[] beta, float[] mean, float[] var,
                             double eps) {
        int s0 = x.length / channels;
        float[] y = new float[x.length];
        for (int c = 0; c < channels; c++) {
            double scale = (gamma == null ? 1.0 : gamma[c]) / Math.sqrt(var[c] + eps);
            double shift = beta == null ? 0.0 : beta[c];
            for (int s = 0; s < s0; s++) {
                y[c * s0 + s] = (float) ((x[c * s0 + s] - mean[c]) * scale + shift);
            }
        }
        return y;
    }

    /** PReLU: alpha element (c, d, h, w) at c*as[0] + d*as[1] + h*as[2] + w*as[3] (stride 0: shared axis). */
    static float[] prelu(float[] x, int[] in, float[] alpha, int[] as) {
        float[] y = new float[x.length];
        int k = 0;
        for (int c = 0; c < in[0]; c++) {
            for (int d = 0; d < in[1]; d++) {
                for (int h = 0; h < in[2]; h++) {
                    for (int w = 0; w < in[3]; w++, k++) {
                        float v = x[k];
                        y[k] = v >= 0 ? v : alpha[c * as[0] + d * as[1] + h * as[2] + w * as[3]] * v;
                    }
                }
            }
        }
        return y;
    }

    /** Softmax over the channels of each position. */
    static float[] softmax(float[] x, int channels) {
        return softmax(x, channels, false);
    }

    /** Softmax (log: log-softmax, Torch7 nn.LogSoftMax) over the channels of each position, in double precision. */
    static float[] softmax(float[] x, int channels, boolean log) {
        float[] y = new float[x.length];
        int s0 = x.length / channels;
        for (int s = 0; s < s0; s++) {
            double top = Double.NEGATIVE_INFINITY, sum = 0.0;
            for (int c = 0; c < channels; c++) {
                top = Math.max(top, x[c * s0 + s]);
            }
            for (int c = 0; c < channels; c++) {
                sum += Math.exp(x[c * s0 + s] - top);
            }
            for (int c = 0; c < channels; c++) {
                double shifted = x[c * s0 + s] - top;
                y[c * s0 + s] = (float) (log ? shifted - Math.log(sum) : Math.exp(shifted) / sum);
            }
        }
        return y;
    }

    /**
     * Caffe LRN of a channels-first map ({@code dims}: c, d, h, w) with an odd window {@code size}: across
     * channels x / (k + alpha/size * sum of x^2 over the size channels centred on it)^beta; within a channel
     * x / (1 + alpha/size^2 * sum of x^2 over the size x size window centred on it, zero outside)^beta.
     */
    static float[] lrn(float[] x, int[] dims, int size, double alpha, double beta, double k, boolean within) {
        int channels = dims[0], depth = dims[1], height = dims[2], width = dims[3];
        int plane = height * width, s0 = depth * plane, half = (size - 1) / 2;
        float[] y = new float[x.length];
        for (int c = 0; c < channels; c++) {
            for (int s = 0; s < s0; s++) {
                double sum = 0.0;
                if (within) {
                    int h = (s % plane) / width, w = s % width, base = c * s0 + (s / plane) * plane;
                    for (int i = Math.max(0, h - half); i <= Math.min(height - 1, h + half); i++) {
                        for (int j = Math.max(0, w - half); j <= Math.min(width - 1, w + half); j++) {
                            double v = x[base + i * width + j];
                            sum += v * v;
                        }
                    }
                } else {
                    for (int q = Math.max(0, c - half); q <= Math.min(channels - 1, c + half); q++) {
                        double v = x[q * s0 + s];
                        sum += v * v;
                    }
                }
                double scale = within ? 1.0 + alpha / ((double) size * size) * sum : k + alpha / size * sum;
                y[c * s0 + s] = (float) (x[c * s0 + s] / Math.pow(scale, beta));
            }
        }
        return y;
    }

    /** Caffe Power: (shift + scale * x) ^ power of every value, in double precision. */
    static float[] power(float[] x, double power, double scale, double shift) {
        float[] y = new float[x.length];
        for (int k = 0; k < x.length; k++) {
            y[k] = (float) Math.pow(shift + scale * x[k], power);
        }
        return y;
    }

    /** x / (sum |x|^p + eps)^(1/p): over the channels of each position, or over every value (acrossAll). */
    static float[] normalize(float[] x, int channels, double p, double eps, boolean acrossAll) {
        float[] y = new float[x.length];
        int s0 = x.length / channels;
        int groups = acrossAll ? 1 : s0;
        for (int s = 0; s < groups; s++) {
            double sum = 0.0;
            for (int c = 0; c < channels; c++) {
                for (int t = acrossAll ? 0 : s; t < (acrossAll ? s0 : s + 1); t++) {
                    sum += Math.pow(Math.abs(x[c * s0 + t]), p);
                }
            }
            double norm = Math.pow(sum + eps, 1.0 / p);
            for (int c = 0; c < channels; c++) {
                for (int t = acrossAll ? 0 : s; t < (acrossAll ? s0 : s + 1); t++) {
                    y[c * s0 + t] = (float) (x[c * s0 + t] / norm);
                }
            }
        }
        return y;
    }

    /** Element-wise activation (softmax: over the channels of each position) into a new array. */
    static float[] activation(float[] input, String name, int channels) {
        if (name.equals("softmax")) {
            return softmax(input, channels);
        }
        float[] x = input.clone();
        switch (name) {
            case "relu":
                for (int k = 0; k < x.length; k++) {
                    x[k] = Math.max(x[k], 0f);
                }
                return x;
            case "relu6":
                for (int k = 0; k < x.length; k++) {
                    x[k] = Math.min(Math.max(x[k], 0f), 6f);
                }
                return x;
            default:
                for (int k = 0; k < x.length; k++) {
                    x[k] = (float) scalar(name, x[k]);
                }
                return x;
        }
    }

    /** One activation of one value, in double precision. */
    static double scalar(String name, double v) {
        switch (name) {
            case "sigmoid": return 1.0 / (1.0 + Math.exp(-v));
            case "hard_sigmoid": return Math.max(0.0, Math.min(1.0, 0.2 * v + 0.5));
            case "hard_sigmoid_keras3": return Math.max(0.0, Math.min(1.0, v / 6.0 + 0.5));
            case "relu": return Math.max(v, 0.0);
            case "tanh": return Math.tanh(v);
            case "elu": return v > 0 ? v : Math.expm1(v);
            case "selu": return 1.0507009873554805 * (v > 0 ? v : 1.6732632423543772 * Math.expm1(v));
            case "softplus": return v > 0 ? v + Math.log1p(Math.exp(-v)) : Math.log1p(Math.exp(v));
            case "softsign": return v / (1.0 + Math.abs(v));
            case "swish":
            case "silu": return v / (1.0 + Math.exp(-v));
            case "exponential": return Math.exp(v);
            case "linear": return v;
            default: throw new IllegalArgumentException("activation " + name);
        }
    }

    /**
     * One direction of an LSTM or GRU over a (steps, features) sequence, row-major; returns every step's
     * hidden state (steps, units) in processing order (last step first when reverse). Weights in PyTorch's
     * layout and gate order: wih (gates*units, features), whh (gates*units, units); LSTM gates i, f, g, o
     * (c = f*c + i*g, h = o*act(c)); GRU gates r, z, n, h = (1-z)*n + z*h with n = act(Wx + b + r*(Uh + c))
     * when resetAfter, else act(Wx + b + U(r*h) + c).
     */
    static float[] recurrent(float[] x, int steps, int features, int units, boolean gru, boolean resetAfter,
                             float[] wih, float[] whh, float[] bih, float[] bhh, boolean reverse, String act,
                             String recurrentAct) {
        int gates = gru ? 3 : 4;
        double[] h = new double[units], c = new double[units], gi = new double[gates * units],
                gh = new double[gates * units];
        float[] out = new float[steps * units];
        for (int step = 0; step < steps; step++) {
            int t = reverse ? steps - 1 - step : step;
            for (int g = 0; g < gates * units; g++) {
                double s = bih == null ? 0.0 : bih[g];
                for (int f = 0; f < features; f++) {
                    s += wih[g * features + f] * (double) x[t * features + f];
                }
                gi[g] = s;
                double r = bhh == null ? 0.0 : bhh[g];
                if (!gru || resetAfter || g < 2 * units) {
                    for (int u = 0; u < units; u++) {
                        r += whh[g * units + u] * h[u];
                    }
                }
                gh[g] = r;
            }
            if (gru) {
                double[] next = new double[units];
                for (int u = 0; u < units; u++) {
                    double reset = scalar(recurrentAct, gi[u] + gh[u]);
                    double update = scalar(recurrentAct, gi[units + u] + gh[units + u]);
                    double candidate;
                    if (resetAfter) {
                        candidate = gi[2 * units + u] + reset * gh[2 * units + u];
                    } else {
                        candidate = gi[2 * units + u] + gh[2 * units + u];
                        for (int k = 0; k < units; k++) {
                            double rk = scalar(recurrentAct, gi[k] + gh[k]);
                            candidate += whh[(2 * units + u) * units + k] * rk * h[k];
                        }
                    }
                    next[u] = (1.0 - update) * scalar(act, candidate) + update * h[u];
                }
                h = next;
            } else {
                for (int u = 0; u < units; u++) {
                    double in = scalar(recurrentAct, gi[u] + gh[u]);
                    double forget = scalar(recurrentAct, gi[units + u] + gh[units + u]);
                    double cell = scalar(act, gi[2 * units + u] + gh[2 * units + u]);
                    double output = scalar(recurrentAct, gi[3 * units + u] + gh[3 * units + u]);
                    c[u] = forget * c[u] + in * cell;
                    h[u] = output * scalar(act, c[u]);
                }
            }
            for (int u = 0; u < units; u++) {
                out[step * units + u] = (float) h[u];
            }
        }
        return out;
    }

    /**
     * The output of an RNN layer from its directions' step outputs (processing order): the sequence
     * (steps, units * directions) or the last output; the backward direction's outputs go back to the
     * positions of the steps they were computed at.
     */
    static float[] rnnOutput(float[] forward, float[] backward, int steps, int units, boolean sequences) {
        int directions = backward == null ? 1 : 2, width = units * directions;
        if (!sequences) {
            float[] y = new float[width];
            System.arraycopy(forward, (steps - 1) * units, y, 0, units);
            if (backward != null) {
                System.arraycopy(backward, (steps - 1) * units, y, units, units);
            }
            return y;
        }
        float[] y = new float[steps * width];
        for (int t = 0; t < steps; t++) {
            System.arraycopy(forward, t * units, y, t * width, units);
            if (backward != null) {
                System.arraycopy(backward, (steps - 1 - t) * units, y, t * width + units, units);
            }
        }
        return y;
    }

    /** Embedding lookup: each input value is a row index of the (rows, width) table. */
    static float[] embedding(float[] x, float[] table, int rows, int width) {
        float[] y = new float[x.length * width];
        for (int t = 0; t < x.length; t++) {
            int row = (int) x[t];
            if (row < 0 || row >= rows || row != x[t]) {
                throw new IllegalArgumentException("embedding index " + x[t] + " at " + t + " is not in [0, " + rows + ")");
            }
            System.arraycopy(table, row * width, y, t * width, width);
        }
        return y;
    }

    /** Element-wise sum of equal-length arrays. */
    static float[] add(float[][] xs) {
        float[] y = xs[0].clone();
        for (int k = 1; k < xs.length; k++) {
            float[] x = xs[k];
            for (int j = 0; j < y.length; j++) {
                y[j] += x[j];
            }
        }
        return y;
    }

    /** Element-wise product of equal-length arrays. */
    static float[] multiply(float[][] xs) {
        float[] y = xs[0].clone();
        for (int k = 1; k < xs.length; k++) {
            float[] x = xs[k];
            for (int j = 0; j < y.length; j++) {
                y[j] *= x[j];
            }
        }
        return y;
    }

    /** Concatenation along an axis: each array is {@code outer} blocks, output block o is their blocks o in turn. */
    static float[] concat(float[][] xs, int outer) {
        int total = 0;
        for (float[] x : xs) {
            total += x.length;
        }
        float[] y = new float[total];
        int at = 0;
        for (int o = 0; o < outer; o++) {
            for (float[] x : xs) {
                int block = x.length / outer;
                System.arraycopy(x, o * block, y, at, block);
                at += block;
            }
        }
        return y;
    }

    /** (S, C) -> (C, S): a channels-last sample to channels-first. */
    static float[] channelsFirst(float[] x, int channels, int spatial) {
        float[] y = new float[x.length];
        for (int s = 0; s < spatial; s++) {
            for (int c = 0; c < channels; c++) {
                y[c * spatial + s] = x[s * channels + c];
            }
        }
        return y;
    }

    /** (C, S) -> (S, C): channels-first to channels-last (also a Flatten in H, W, C order). */
    static float[] channelsLast(float[] x, int channels, int spatial) {
        float[] y = new float[x.length];
        for (int c = 0; c < channels; c++) {
            for (int s = 0; s < spatial; s++) {
                y[s * channels + c] = x[c * spatial + s];
            }
        }
        return y;
    }

    /** Zero padding, pads = {d0, d1, h0, h1, w0, w1}. */
    static float[] zeroPad(float[] x, int[] in, int[] pads) {
        int d1 = in[1] + pads[0] + pads[1], h1 = in[2] + pads[2] + pads[3], w1 = in[3] + pads[4] + pads[5];
        float[] y = new float[in[0] * d1 * h1 * w1];
        for (int c = 0; c < in[0]; c++) {
            for (int d = 0; d < in[1]; d++) {
                for (int h = 0; h < in[2]; h++) {
                    System.arraycopy(x, ((c * in[1] + d) * in[2] + h) * in[3], y,
                            ((c * d1 + d + pads[0]) * h1 + h + pads[2]) * w1 + pads[4], in[3]);
                }
            }
        }
        return y;
    }

    /** Cropping, crops = {d0, d1, h0, h1, w0, w1}. */
    static float[] crop(float[] x, int[] in, int[] crops) {
        int d1 = in[1] - crops[0] - crops[1], h1 = in[2] - crops[2] - crops[3], w1 = in[3] - crops[4] - crops[5];
        float[] y = new float[in[0] * d1 * h1 * w1];
        for (int c = 0; c < in[0]; c++) {
            for (int d = 0; d < d1; d++) {
                for (int h = 0; h < h1; h++) {
                    System.arraycopy(x, ((c * in[1] + d + crops[0]) * in[2] + h + crops[2]) * in[3] + crops[4], y,
                            ((c * d1 + d) * h1 + h) * w1, w1);
                }
            }
        }
        return y;
    }
}
