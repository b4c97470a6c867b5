package tidemark.opensearch;

import org.opensearch.Version;
import org.opensearch.cluster.node.DiscoveryNode;
import org.opensearch.cluster.service.ClusterService;
import org.opensearch.common.settings.Settings;
import org.opensearch.core.common.transport.TransportAddress;
import org.opensearch.env.Environment;
import org.opensearch.http.HttpServerTransport;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;
import org.opensearch.plugins.PluginInfo;
import org.opensearch.transport.TransportService;

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.lang.reflect.Constructor;
import java.lang.reflect.ParameterizedType;
import java.lang.reflect.Type;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

/**
 * One embedded OpenSearch node (2.19 or 3.x: the same source compiles against either line's
 * jars), with the modules tidemark relies on loaded as classpath plugins.
 *
 * <p>stdout carries exactly one line, a JSON object, printed once the node serves HTTP
 * (and, in single-node mode, has elected itself); everything else goes to stderr or the
 * log. SIGTERM/SIGINT close the node and exit 0. See ../../../../README.md for the flags.
 */
public final class Launcher {

    /** The modules: 2.x class name, 3.x class name. All are required. */
    private static final String[][] PLUGINS = {
        { "org.opensearch.transport.Netty4Plugin", "org.opensearch.transport.Netty4ModulePlugin" },
        { "org.opensearch.analysis.common.CommonAnalysisPlugin", "org.opensearch.analysis.common.CommonAnalysisModulePlugin" },
        { "org.opensearch.painless.PainlessPlugin", "org.opensearch.painless.PainlessModulePlugin" },
        { "org.opensearch.index.reindex.ReindexPlugin", "org.opensearch.index.reindex.ReindexModulePlugin" },
        { "org.opensearch.index.mapper.MapperExtrasPlugin", "org.opensearch.index.mapper.MapperExtrasModulePlugin" }, };

    /**
     * Node's protected constructor: (Environment, Collection&lt;Class&lt;? extends Plugin&gt;&gt;, boolean)
     * in 2.x, (Environment, Collection&lt;PluginInfo&gt;, boolean) in 3.x. Both erase to the same
     * signature, so one raw call serves both; the element type is chosen at run time.
     */
    static final class EmbeddedNode extends Node {
        @SuppressWarnings({ "unchecked", "rawtypes" })
        EmbeddedNode(Environment environment, Collection plugins) {
            super(environment, plugins, true);
        }
    }

    private static final PrintStream OUT = System.out;

    public static void main(String[] argv) {
        // Nothing but the JSON line may reach stdout, whatever a library prints.
        System.setOut(System.err);
        Options o;
        try {
            o = Options.parse(argv);
        } catch (IllegalArgumentException e) {
            System.err.println("launcher: " + e.getMessage());
            System.err.println(Options.USAGE);
            System.exit(2);
            return;
        }
        if (o.help) {
            System.err.println(Options.USAGE);
            System.exit(0);
        }
        try {
            run(o);
        } catch (Throwable t) {
            System.err.println("launcher: the OpenSearch node failed to start: " + t);
            t.printStackTrace(System.err);
            System.err.flush();
            Runtime.getRuntime().halt(1);
        }
    }

    private static void run(Options o) throws Exception {
        long t0 = System.nanoTime();
        int major = Version.CURRENT.major;

        // The plugins first: a missing one is a broken lib dir, said before anything starts.
        List<Class<? extends Plugin>> classes = new ArrayList<>();
        for (String[] names : PLUGINS) {
            String name = major >= 3 ? names[1] : names[0];
            try {
                classes.add(Class.forName(name).asSubclass(Plugin.class));
            } catch (ClassNotFoundException | NoClassDefFoundError e) {
                throw new IllegalStateException(
                    "plugin class " + name + " is not on the classpath (OpenSearch " + Version.CURRENT
                        + "); its module jar is missing from the lib dir: " + e,
                    e
                );
            }
        }

        Path base = o.base();
        Files.createDirectories(base);
        Path home = o.home != null ? Paths.get(o.home) : base.resolve("home");
        Files.createDirectories(home);
        Path data;
        Path ephemeral = null;
        if (o.data != null) {
            data = Paths.get(o.data);
        } else if (o.httpPort != 0) {
            data = base.resolve("data").resolve(o.clusterName + "-" + o.nodeName);
        } else {
            // A node on a random port is a throwaway: fresh data, removed on exit (and by the
            // next start if this process dies without cleaning up).
            Path tmp = base.resolve("tmp");
            sweepDeadTmp(tmp);
            ephemeral = tmp.resolve(Long.toString(ProcessHandle.current().pid()));
            deleteTree(ephemeral);
            data = ephemeral;
        }
        Files.createDirectories(data);

        Settings.Builder s = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", data.toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", o.clusterName)
            .put("node.name", o.nodeName)
            .put("network.host", o.host)
            .put("http.port", Integer.toString(o.httpPort))
            .put("transport.port", Integer.toString(o.transportPort))
            .put("cluster.routing.allocation.disk.threshold_enabled", false);
        if (o.seedHosts == null) {
            s.put("discovery.type", "single-node");
        } else {
            s.putList("discovery.seed_hosts", o.seedHosts);
            if (o.initialManagers != null) {
                s.putList("cluster.initial_cluster_manager_nodes", o.initialManagers);
            }
        }
        for (Map.Entry<String, String> e : o.extra.entrySet()) {
            s.put(e.getKey(), e.getValue());
        }

        Environment env = InternalSettingsPreparer.prepareEnvironment(s.build(), Collections.emptyMap(), null, () -> o.nodeName);
        Collection<?> plugins = takesPluginInfos() ? toInfos(classes) : classes;
        Node node = new EmbeddedNode(env, plugins);

        CountDownLatch stopped = new CountDownLatch(1);
        final Path tmpData = ephemeral;
        Runnable stop = () -> {
            long s0 = System.nanoTime();
            int code = 0;
            try {
                node.close();
                if (!node.awaitClose(30, TimeUnit.SECONDS)) {
                    System.err.println("launcher: node did not close within 30 s");
                    code = 1;
                }
            } catch (Throwable t) {
                System.err.println("launcher: error while closing the node: " + t);
                code = 1;
            }
            if (tmpData != null) {
                try {
                    deleteTree(tmpData);
                } catch (IOException e) {
                    System.err.println("launcher: could not remove " + tmpData + ": " + e);
                }
            }
            System.err.printf("launcher: node %s stopped in %.2f s%n", o.nodeName, (System.nanoTime() - s0) / 1e9);
            System.err.flush();
            stopped.countDown();
            System.exit(code);
        };
        installSignalHandlers(stop);

        node.start();

        TransportAddress http = node.injector().getInstance(HttpServerTransport.class).boundAddress().publishAddress();
        TransportAddress transport = node.injector().getInstance(TransportService.class).boundAddress().publishAddress();
        DiscoveryNode local = node.injector().getInstance(ClusterService.class).localNode();

        Map<String, Object> line = new LinkedHashMap<>();
        line.put("url", "http://" + http.getAddress() + ":" + http.getPort());
        line.put("http_port", http.getPort());
        line.put("transport_address", transport.getAddress() + ":" + transport.getPort());
        line.put("pid", ProcessHandle.current().pid());
        line.put("version", Version.CURRENT.toString());
        line.put("node_name", o.nodeName);
        line.put("node_id", local.getId());
        line.put("cluster_name", o.clusterName);
        line.put("mode", o.seedHosts == null ? "single-node" : "cluster");
        line.put("data", data.toString());
        line.put("ephemeral", tmpData != null);
        line.put("java", System.getProperty("java.version"));
        line.put("start_seconds", Math.round((System.nanoTime() - t0) / 1e6) / 1e3);
        OUT.println(toJson(line));
        OUT.flush();

        if (o.exitAfterStart) {
            stop.run();
        }

        if (o.stdinWatch) {
            Thread w = new Thread(() -> {
                try (InputStream in = System.in) {
                    byte[] buf = new byte[256];
                    while (in.read(buf) >= 0) {
                        // Keep reading until EOF: the parent is gone (or closed our stdin).
                    }
                } catch (IOException ignored) {}
                System.err.println("launcher: stdin closed, stopping");
                stop.run();
            }, "tidemark-stdin-watch");
            w.setDaemon(true);
            w.start();
        }

        if (o.parentPid > 0) {
            Thread w = new Thread(() -> {
                while (ProcessHandle.of(o.parentPid).map(ProcessHandle::isAlive).orElse(false)) {
                    try {
                        Thread.sleep(1000);
                    } catch (InterruptedException e) {
                        return;
                    }
                }
                System.err.println("launcher: parent process " + o.parentPid + " is gone, stopping");
                stop.run();
            }, "tidemark-parent-watch");
            w.setDaemon(true);
            w.start();
        }

        // OpenSearch's threads are daemons: this thread keeps the JVM alive until a stop.
        stopped.await();
    }

    /** SIGTERM (and SIGINT, unless ignored) close the node and exit 0 (not 143 as the JVM's default would). */
    private static void installSignalHandlers(Runnable stop) {
        Thread[] once = new Thread[1];
        sun.misc.SignalHandler h = sig -> {
            synchronized (once) {
                if (once[0] != null) return;
                System.err.println("launcher: SIG" + sig.getName() + ", closing the node");
                once[0] = new Thread(stop, "tidemark-stop");
                once[0].start();
            }
        };
        sun.misc.Signal.handle(new sun.misc.Signal("TERM"), h);
        // A node started in the background by a script has SIGINT ignored (so a Ctrl-C in
        // that terminal is not meant for it): keep it that way.
        sun.misc.Signal sigint = new sun.misc.Signal("INT");
        sun.misc.SignalHandler previous = sun.misc.Signal.handle(sigint, h);
        if (previous == sun.misc.SignalHandler.SIG_IGN) {
            sun.misc.Signal.handle(sigint, sun.misc.SignalHandler.SIG_IGN);
        }
    }

    /** Whether Node's plugin constructor takes PluginInfos (3.x) rather than classes (2.x). */
    private static boolean takesPluginInfos() {
        for (Constructor<?> c : Node.class.getDeclaredConstructors()) {
            Type[] p = c.getGenericParameterTypes();
            if (p.length == 3 && p[1] instanceof ParameterizedType) {
                Type elem = ((ParameterizedType) p[1]).getActualTypeArguments()[0];
                return elem == PluginInfo.class;
            }
        }
        throw new IllegalStateException("Node has no (Environment, Collection, boolean) constructor in OpenSearch " + Version.CURRENT);
    }

    private static List<PluginInfo> toInfos(List<Class<? extends Plugin>> classes) {
        List<PluginInfo> infos = new ArrayList<>();
        for (Class<? extends Plugin> c : classes) {
            infos.add(
                new PluginInfo(c.getName(), "classpath plugin", Version.CURRENT.toString(), Version.CURRENT, "1.8", c.getName(), null, Collections.emptyList(), false)
            );
        }
        return infos;
    }

    private static void sweepDeadTmp(Path tmp) throws IOException {
        if (!Files.isDirectory(tmp)) return;
        try (Stream<Path> dirs = Files.list(tmp)) {
            for (Path d : (Iterable<Path>) dirs::iterator) {
                try {
                    long pid = Long.parseLong(d.getFileName().toString());
                    if (ProcessHandle.of(pid).map(ProcessHandle::isAlive).orElse(false)) continue;
                } catch (NumberFormatException e) {
                    continue;
                }
                deleteTree(d);
            }
        }
    }

    private static void deleteTree(Path p) throws IOException {
        if (!Files.exists(p)) return;
        try (Stream<Path> walk = Files.walk(p)) {
            for (Path q : (Iterable<Path>) walk.sorted(Comparator.reverseOrder())::iterator) {
                Files.deleteIfExists(q);
            }
        }
    }

    private static String toJson(Map<String, Object> m) {
        StringBuilder b = new StringBuilder("{");
        for (Map.Entry<String, Object> e : m.entrySet()) {
            if (b.length() > 1) b.append(", ");
            b.append(quote(e.getKey())).append(": ");
            Object v = e.getValue();
            if (v instanceof Number || v instanceof Boolean) b.append(v);
            else b.append(quote(String.valueOf(v)));
        }
        return b.append('}').toString();
    }

    private static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
                    else b.append(c);
            }
        }
        return b.append('"').toString();
    }

    /** Command-line flags. */
    static final class Options {
        static final String USAGE = String.join(
            "\n",
            "usage: opensearch.sh [--engine VERSION] [flags]",
            "  --http-port N             HTTP port (default 0: a free port)",
            "  --transport-port N        transport port (default 0: a free port)",
            "  --host ADDR               bind/publish address (default 127.0.0.1)",
            "  --node-name NAME          (default tidemark)",
            "  --cluster-name NAME       (default tidemark)",
            "  --data DIR                path.data (default: <base>/data/<cluster>-<node> for a fixed",
            "                            --http-port; a throwaway <base>/tmp/<pid> for port 0)",
            "  --home DIR                path.home (default <base>/home)",
            "  --seed-hosts H:P,...      cluster mode: discovery.seed_hosts (no single-node discovery)",
            "  --initial-cluster-manager-nodes A,B,...",
            "                            cluster mode: cluster.initial_cluster_manager_nodes",
            "  -E key=value              any other node setting (repeatable)",
            "  --stdin-watch             stop the node when stdin reaches EOF (parent gone)",
            "  --parent-pid PID          stop the node when process PID is gone",
            "  --exit-after-start        close the node right after the JSON line (a training run)",
            "  <base> is -Dtidemark.opensearch.base, set by opensearch.sh to",
            "  ${TIDEMARK_CACHE:-~/.cache/tidemark}/opensearch/<version>"
        );

        int httpPort = 0;
        int transportPort = 0;
        String host = "127.0.0.1";
        String nodeName = "tidemark";
        String clusterName = "tidemark";
        String data;
        String home;
        List<String> seedHosts;
        List<String> initialManagers;
        Map<String, String> extra = new LinkedHashMap<>();
        boolean stdinWatch;
        long parentPid;
        boolean exitAfterStart;
        boolean help;

        Path base() {
            String b = System.getProperty("tidemark.opensearch.base");
            if (b == null || b.isEmpty()) {
                String cache = System.getenv("TIDEMARK_CACHE");
                if (cache == null || cache.isEmpty()) cache = System.getProperty("user.home") + "/.cache/tidemark";
                b = cache + "/opensearch/" + Version.CURRENT;
            }
            return Paths.get(b);
        }

        static Options parse(String[] a) {
            Options o = new Options();
            for (int i = 0; i < a.length; i++) {
                String f = a[i];
                String v = null;
                int eq = f.indexOf('=');
                if (f.startsWith("--") && eq > 0) {
                    v = f.substring(eq + 1);
                    f = f.substring(0, eq);
                }
                switch (f) {
                    case "-h":
                    case "--help":
                        o.help = true;
                        continue;
                    case "--stdin-watch":
                        o.stdinWatch = true;
                        continue;
                    case "--exit-after-start":
                        o.exitAfterStart = true;
                        continue;
                    default:
                        break;
                }
                if (v == null) {
                    if (i + 1 >= a.length) throw new IllegalArgumentException(f + " needs a value");
                    v = a[++i];
                }
                switch (f) {
                    case "--http-port": o.httpPort = port(f, v); break;
                    case "--transport-port": o.transportPort = port(f, v); break;
                    case "--host": o.host = v; break;
                    case "--node-name": o.nodeName = v; break;
                    case "--cluster-name": o.clusterName = v; break;
                    case "--data": o.data = v; break;
                    case "--home": o.home = v; break;
                    case "--parent-pid":
                        try {
                            o.parentPid = Long.parseLong(v);
                        } catch (NumberFormatException e) {
                            throw new IllegalArgumentException("--parent-pid wants a process id, got " + v);
                        }
                        break;
                    case "--seed-hosts": o.seedHosts = list(v); break;
                    case "--initial-cluster-manager-nodes": o.initialManagers = list(v); break;
                    case "-E": {
                        int k = v.indexOf('=');
                        if (k <= 0) throw new IllegalArgumentException("-E wants key=value, got " + v);
                        o.extra.put(v.substring(0, k), v.substring(k + 1));
                        break;
                    }
                    default:
                        throw new IllegalArgumentException("unknown flag " + f);
                }
            }
            if (o.initialManagers != null && o.seedHosts == null) {
                throw new IllegalArgumentException("--initial-cluster-manager-nodes needs --seed-hosts (cluster mode)");
            }
            return o;
        }

        private static int port(String f, String v) {
            try {
                int p = Integer.parseInt(v);
                if (p < 0 || p > 65535) throw new NumberFormatException();
                return p;
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException(f + " wants a port number, got " + v);
            }
        }

        private static List<String> list(String v) {
            List<String> l = new ArrayList<>();
            for (String x : v.split(",")) {
                if (!x.trim().isEmpty()) l.add(x.trim());
            }
            return l;
        }
    }

    private Launcher() {}
}
