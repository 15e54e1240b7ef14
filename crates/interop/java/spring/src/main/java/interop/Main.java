package interop;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.retry.ExponentialBackoffRetry;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.details.JsonInstanceSerializer;
import org.springframework.cloud.client.ServiceInstance;
import org.springframework.cloud.commons.util.InetUtils;
import org.springframework.cloud.commons.util.InetUtilsProperties;
import org.springframework.cloud.zookeeper.discovery.ZookeeperDiscoveryClient;
import org.springframework.cloud.zookeeper.discovery.ZookeeperDiscoveryProperties;
import org.springframework.cloud.zookeeper.discovery.ZookeeperInstance;
import org.springframework.cloud.zookeeper.serviceregistry.ServiceInstanceRegistration;
import org.springframework.cloud.zookeeper.serviceregistry.ZookeeperServiceRegistry;

/**
 * Spring Cloud Zookeeper 4.1's own discovery classes, wired by hand the way
 * its auto-configuration wires them (CuratorServiceDiscoveryAutoConfiguration,
 * ZookeeperAutoServiceRegistration, ZookeeperDiscoveryClientConfiguration),
 * without starting a Spring Boot application.
 *
 * <pre>
 * register CONNECT ROOT NAME ID ADDRESS PORT META   (META: k=v,k=v or "")
 *   ZookeeperServiceRegistry.register of a ServiceInstanceRegistration with
 *   Spring's ZookeeperInstance payload; prints "registered", holds it until
 *   stdin closes
 * list CONNECT ROOT NAME WANT
 *   ZookeeperDiscoveryClient.getInstances, waiting (15 s at most) for WANT
 *   instances; prints them as one JSON array
 * </pre>
 */
public final class Main {
    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            fail("usage: register CONNECT ROOT NAME ID ADDRESS PORT META | list CONNECT ROOT NAME WANT");
        }
        CuratorFramework curator = CuratorFrameworkFactory.newClient(args[1], new ExponentialBackoffRetry(200, 10));
        curator.start();
        if (!curator.blockUntilConnected(15, TimeUnit.SECONDS)) {
            fail("could not connect to ZooKeeper at " + args[1]);
        }
        ServiceDiscovery<ZookeeperInstance> discovery = ServiceDiscoveryBuilder.builder(ZookeeperInstance.class)
                .client(curator)
                .basePath(args[2])
                .serializer(new JsonInstanceSerializer<>(ZookeeperInstance.class))
                .build();
        discovery.start();
        switch (args[0]) {
            case "register" -> {
                Map<String, String> meta = pairs(args[7]);
                ServiceInstanceRegistration registration = ServiceInstanceRegistration.builder()
                        .defaultUriSpec()
                        .address(args[5])
                        .port(Integer.parseInt(args[6]))
                        .name(args[3])
                        .id(args[4])
                        .payload(new ZookeeperInstance(args[3], args[3], meta))
                        .build();
                ZookeeperServiceRegistry registry = new ZookeeperServiceRegistry(discovery);
                registry.register(registration);
                System.out.println("registered");
                System.out.flush();
                System.in.transferTo(java.io.OutputStream.nullOutputStream());
                registry.deregister(registration);
            }
            case "list" -> {
                ZookeeperDiscoveryProperties properties = new ZookeeperDiscoveryProperties(new InetUtils(new InetUtilsProperties()));
                properties.setRoot(args[2]);
                ZookeeperDiscoveryClient client = new ZookeeperDiscoveryClient(discovery, null, properties);
                int want = Integer.parseInt(args[4]);
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
                List<ServiceInstance> found;
                while (true) {
                    found = client.getInstances(args[3]);
                    if (found.size() >= want || System.nanoTime() > deadline) {
                        break;
                    }
                    Thread.sleep(200);
                }
                List<Map<String, Object>> out = new ArrayList<>();
                for (ServiceInstance i : found) {
                    Map<String, Object> row = new LinkedHashMap<>();
                    row.put("serviceId", i.getServiceId());
                    row.put("instanceId", i.getInstanceId());
                    row.put("host", i.getHost());
                    row.put("port", i.getPort());
                    row.put("metadata", i.getMetadata());
                    row.put("uri", String.valueOf(i.getUri()));
                    out.add(row);
                }
                System.out.println(new ObjectMapper().writeValueAsString(out));
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
        System.err.println("spring peer: " + message);
        System.exit(1);
    }
}
