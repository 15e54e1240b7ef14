package interop;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.retry.ExponentialBackoffRetry;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.ServiceInstance;
import org.apache.curator.x.discovery.UriSpec;
import org.apache.curator.x.discovery.details.JsonInstanceSerializer;

/**
 * Plain Curator x-discovery, as a Curator (or Dubbo 3) service uses it, with a
 * map payload carrying the instance's metadata.
 *
 * <pre>
 * register CONNECT BASEPATH NAME ID ADDRESS PORT META   (META: k=v,k=v or "")
 *   prints "registered", holds the registration until stdin closes
 * list CONNECT BASEPATH NAME WANT
 *   waits (15 s at most) for WANT instances, prints them as one JSON array
 * </pre>
 */
public final class Main {
    @SuppressWarnings({"rawtypes", "unchecked"})
    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            fail("usage: register CONNECT BASEPATH NAME ID ADDRESS PORT META | list CONNECT BASEPATH NAME WANT");
        }
        CuratorFramework curator = CuratorFrameworkFactory.newClient(args[1], new ExponentialBackoffRetry(200, 10));
        curator.start();
        if (!curator.blockUntilConnected(15, TimeUnit.SECONDS)) {
            fail("could not connect to ZooKeeper at " + args[1]);
        }
        ServiceDiscovery<Map> discovery = ServiceDiscoveryBuilder.builder(Map.class)
                .client(curator)
                .basePath(args[2])
                .serializer(new JsonInstanceSerializer<>(Map.class))
                .build();
        discovery.start();
        ObjectMapper json = new ObjectMapper();
        switch (args[0]) {
            case "register" -> {
                Map<String, String> meta = pairs(args[7]);
                ServiceInstance<Map> instance = ServiceInstance.<Map>builder()
                        .name(args[3]).id(args[4]).address(args[5]).port(Integer.parseInt(args[6]))
                        .payload(new LinkedHashMap<>(meta))
                        .uriSpec(new UriSpec("{scheme}://{address}:{port}"))
                        .build();
                discovery.registerService(instance);
                System.out.println("registered");
                System.out.flush();
                System.in.transferTo(java.io.OutputStream.nullOutputStream());
                discovery.unregisterService(instance);
            }
            case "list" -> {
                int want = Integer.parseInt(args[4]);
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
                Collection<ServiceInstance<Map>> found;
                while (true) {
                    found = discovery.queryForInstances(args[3]);
                    if (found.size() >= want || System.nanoTime() > deadline) {
                        break;
                    }
                    Thread.sleep(200);
                }
                List<Map<String, Object>> out = new ArrayList<>();
                for (ServiceInstance<Map> i : found) {
                    Map<String, Object> row = new LinkedHashMap<>();
                    row.put("name", i.getName());
                    row.put("id", i.getId());
                    row.put("address", i.getAddress());
                    row.put("port", i.getPort());
                    row.put("payload", i.getPayload());
                    row.put("serviceType", String.valueOf(i.getServiceType()));
                    out.add(row);
                }
                System.out.println(json.writeValueAsString(out));
                if (found.size() < want) {
                    fail("saw " + found.size() + " instances, wanted " + want);
                }
            }
            default -> fail("unknown command " + args[0]);
        }
        discovery.close();
        curator.close();
    }

    static Map<String, String> pairs(String s) {
        Map<String, String> out = new LinkedHashMap<>();
        for (String part : s.split(",")) {
            if (!part.isEmpty()) {
                String[] kv = part.split("=", 2);
                out.put(kv[0], kv.length > 1 ? kv[1] : "");
            }
        }
        return out;
    }

    static void fail(String message) {
        System.err.println("curator peer: " + message);
        System.exit(1);
    }
}
