/*@PACKAGE@*/
import java.nio.file.Paths;
import java.util.Locale;

/**
 * Proves the weights were read right: prints, per tensor in manifest order, {@code NAME SUM} with the
 * double-precision sum of its elements ({@code %.9e}); compare with numpy's
 * {@code float(np.sum(array, dtype=np.float64))}. Loading checks every tensor's SHA-256.
 * <pre>
 *   java WeightportCheck            (the weights on the classpath)
 *   java WeightportCheck PATH       (a manifest, or the folder holding it)
 * </pre>
 */
public final class WeightportCheck {
    private WeightportCheck() {
    }

    /**
     * Print each tensor's name and sum.
     *
     * @param args nothing (classpath), or the manifest or its folder; a trailing --verify is accepted
     * @throws Exception if the weights cannot be read or are damaged
     */
    public static void main(String[] args) throws Exception {
        WeightportWeights weights = args.length > 0 && !args[0].equals("--verify")
                ? WeightportWeights.load(Paths.get(args[0])) : WeightportWeights.load();
        StringBuilder out = new StringBuilder();
        for (WeightportWeights.Tensor t : weights.tensors()) {
            out.append(t.name).append(' ').append(String.format(Locale.ROOT, "%.9e", t.sum())).append('\n');
        }
        System.out.print(out);
    }
}
