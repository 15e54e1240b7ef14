// Command peers drives the real Go service-discovery libraries the interop
// tests check against: go-kit v0.13 (sd/etcdv3, sd/zk, sd/consul) and
// records of Kratos' core registry.ServiceInstance, written and read the way
// Kratos' etcd, ZooKeeper and Consul registries do (their contrib modules
// are not served by the module proxy here; their source is public).
//
// Usage: peers COMMAND ARGS...; a register command prints "registered" once
// its record is in, then holds it until its standard input closes. A list
// command waits (up to 15 s) until it sees at least WANT instances, prints
// them as one JSON array and exits (1 when it saw fewer).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/consul"
	"github.com/go-kit/kit/sd/etcdv3"
	kitzk "github.com/go-kit/kit/sd/zk"
	"github.com/go-kit/log"
	"github.com/go-kratos/kratos/v2/registry"
	"github.com/go-zookeeper/zk"
	consulapi "github.com/hashicorp/consul/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const waitLimit = 15 * time.Second

func main() {
	if len(os.Args) < 2 {
		fail("usage: peers COMMAND ARGS... (see the source)")
	}
	logger := log.NewLogfmtLogger(os.Stderr)
	cmd, args := os.Args[1], os.Args[2:]
	switch cmd {
	case "gokit-etcd-register": // ENDPOINT KEY VALUE
		need(args, 3)
		client := etcdClient(args[0])
		reg := etcdv3.NewRegistrar(client, etcdv3.Service{Key: args[1], Value: args[2],
			TTL: etcdv3.NewTTLOption(time.Second, 5*time.Second)}, logger)
		reg.Register()
		hold()
		reg.Deregister()
	case "gokit-etcd-list": // ENDPOINT PREFIX WANT
		need(args, 3)
		inst, err := etcdv3.NewInstancer(etcdClient(args[0]), args[1], logger)
		check(err, "go-kit etcdv3 instancer")
		printJSON(waitInstancer(inst, atoi(args[2])))
	case "gokit-zk-register": // SERVERS PATH NAME DATA
		need(args, 4)
		client, err := kitzk.NewClient(strings.Split(args[0], ","), logger)
		check(err, "go-kit zk client")
		// Stop (closing the session) removes the ephemeral node; go-kit's
		// Deregister deletes the service node too and fails with siblings.
		kitzk.NewRegistrar(client, kitzk.Service{Path: args[1], Name: args[2], Data: []byte(args[3])}, logger).Register()
		hold()
		client.Stop()
	case "gokit-zk-list": // SERVERS PATH WANT
		need(args, 3)
		client, err := kitzk.NewClient(strings.Split(args[0], ","), logger)
		check(err, "go-kit zk client")
		inst, err := kitzk.NewInstancer(client, args[1], logger)
		check(err, "go-kit zk instancer")
		printJSON(waitInstancer(inst, atoi(args[2])))
	case "gokit-consul-register": // ADDR NAME ID HOST PORT TAGS META(k=v,...)
		need(args, 7)
		client := consul.NewClient(consulClient(args[0]))
		reg := consul.NewRegistrar(client, &consulapi.AgentServiceRegistration{
			ID: args[2], Name: args[1], Address: args[3], Port: atoi(args[4]),
			Tags: splitList(args[5]), Meta: pairs(args[6]),
		}, logger)
		reg.Register()
		hold()
		reg.Deregister()
	case "gokit-consul-list": // ADDR NAME TAGS WANT
		need(args, 4)
		inst := consul.NewInstancer(consul.NewClient(consulClient(args[0])), logger, args[1], splitList(args[2]), true)
		printJSON(waitInstancer(inst, atoi(args[3])))
	case "kratos-etcd-register": // ENDPOINT NAMESPACE ID NAME VERSION META ENDPOINTS
		need(args, 7)
		kratosEtcdRegister(args[0], args[1], kratosInstance(args[2:]))
	case "kratos-etcd-list": // ENDPOINT NAMESPACE NAME WANT
		need(args, 4)
		printJSON(waitList(atoi(args[3]), func() ([]*registry.ServiceInstance, error) {
			return kratosEtcdList(args[0], args[1], args[2])
		}))
	case "kratos-zk-register": // SERVERS NAMESPACE ID NAME VERSION META ENDPOINTS
		need(args, 7)
		kratosZkRegister(args[0], args[1], kratosInstance(args[2:]))
	case "kratos-zk-list": // SERVERS NAMESPACE NAME WANT
		need(args, 4)
		conn := zkConn(args[0])
		printJSON(waitList(atoi(args[3]), func() ([]*registry.ServiceInstance, error) {
			return kratosZkList(conn, args[1], args[2])
		}))
	case "kratos-consul-register": // ADDR ID NAME VERSION META ENDPOINTS
		need(args, 6)
		c := consulClient(args[0])
		reg := kratosConsulRegistration(kratosInstance(args[1:]))
		check(c.Agent().ServiceRegister(reg), "consul register")
		hold()
		_ = c.Agent().ServiceDeregister(reg.ID)
	case "kratos-consul-list": // ADDR NAME WANT
		need(args, 3)
		c := consulClient(args[0])
		printJSON(waitList(atoi(args[2]), func() ([]*registry.ServiceInstance, error) {
			return kratosConsulList(c, args[1])
		}))
	case "consul-meta": // ADDR NAME: the catalog's Meta and TaggedAddresses of each instance
		need(args, 2)
		entries, _, err := consulClient(args[0]).Catalog().Service(args[1], "", nil)
		check(err, "consul catalog")
		type seen struct {
			ID              string            `json:"id"`
			Meta            map[string]string `json:"meta"`
			Tags            []string          `json:"tags"`
			TaggedAddresses map[string]string `json:"tagged_addresses"`
		}
		out := []seen{}
		for _, e := range entries {
			tagged := map[string]string{}
			for k, v := range e.ServiceTaggedAddresses {
				tagged[k] = v.Address + "|" + strconv.Itoa(v.Port)
			}
			out = append(out, seen{e.ServiceID, e.ServiceMeta, e.ServiceTags, tagged})
		}
		printJSON(out)
	default:
		fail("unknown command " + cmd)
	}
}

// kratosInstance builds Kratos' own type from ID NAME VERSION META ENDPOINTS.
func kratosInstance(a []string) *registry.ServiceInstance {
	return &registry.ServiceInstance{ID: a[0], Name: a[1], Version: a[2], Metadata: pairs(a[3]), Endpoints: splitList(a[4])}
}

// kratosEtcdRegister writes like contrib/registry/etcd Register: key
// <namespace>/<name>/<id>, the instance's JSON, on a kept-alive lease.
func kratosEtcdRegister(endpoint, namespace string, si *registry.ServiceInstance) {
	cli := etcdRaw(endpoint)
	value, err := json.Marshal(si)
	check(err, "marshal")
	ctx := context.Background()
	lease, err := cli.Grant(ctx, 15)
	check(err, "etcd grant")
	_, err = cli.Put(ctx, fmt.Sprintf("%s/%s/%s", namespace, si.Name, si.ID), string(value), clientv3.WithLease(lease.ID))
	check(err, "etcd put")
	alive, err := cli.KeepAlive(ctx, lease.ID)
	check(err, "etcd keep-alive")
	go func() {
		for range alive {
		}
	}()
	hold()
	_, _ = cli.Revoke(ctx, lease.ID)
}

// kratosEtcdList reads like contrib/registry/etcd GetService: every value
// under <namespace>/<name>, unmarshalled, those of another name dropped.
func kratosEtcdList(endpoint, namespace, name string) ([]*registry.ServiceInstance, error) {
	cli := etcdRaw(endpoint)
	defer cli.Close()
	resp, err := cli.Get(context.Background(), fmt.Sprintf("%s/%s", namespace, name), clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	items := []*registry.ServiceInstance{}
	for _, kv := range resp.Kvs {
		si := &registry.ServiceInstance{}
		if err := json.Unmarshal(kv.Value, si); err != nil {
			return nil, err
		}
		if si.Name != name {
			continue
		}
		items = append(items, si)
	}
	return items, nil
}

// kratosZkRegister writes like contrib/registry/zookeeper Register: an
// ephemeral <namespace>/<name>/<id> holding the instance's JSON.
func kratosZkRegister(servers, namespace string, si *registry.ServiceInstance) {
	conn := zkConn(servers)
	value, err := json.Marshal(si)
	check(err, "marshal")
	for _, p := range []string{namespace, namespace + "/" + si.Name} {
		if _, err := conn.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && err != zk.ErrNodeExists {
			check(err, "zk create "+p)
		}
	}
	_, err = conn.Create(namespace+"/"+si.Name+"/"+si.ID, value, zk.FlagEphemeral, zk.WorldACL(zk.PermAll))
	check(err, "zk create instance")
	hold()
	conn.Close()
}

// kratosZkList reads like contrib/registry/zookeeper GetService.
func kratosZkList(conn *zk.Conn, namespace, name string) ([]*registry.ServiceInstance, error) {
	children, _, err := conn.Children(namespace + "/" + name)
	if err == zk.ErrNoNode {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	items := []*registry.ServiceInstance{}
	for _, child := range children {
		data, _, err := conn.Get(namespace + "/" + name + "/" + child)
		if err != nil {
			return nil, err
		}
		si := &registry.ServiceInstance{}
		if err := json.Unmarshal(data, si); err != nil {
			return nil, err
		}
		if si.Name == name {
			items = append(items, si)
		}
	}
	return items, nil
}

// kratosConsulRegistration builds what contrib/registry/consul Client.Register
// sends (with its health check and heartbeat options off): every endpoint in
// TaggedAddresses under its scheme, the first one's host and port as the
// service address, a version= tag, the metadata as Meta.
func kratosConsulRegistration(si *registry.ServiceInstance) *consulapi.AgentServiceRegistration {
	addresses := map[string]consulapi.ServiceAddress{}
	reg := &consulapi.AgentServiceRegistration{ID: si.ID, Name: si.Name, Meta: si.Metadata,
		Tags: []string{fmt.Sprintf("version=%s", si.Version)}}
	for i, endpoint := range si.Endpoints {
		raw, err := url.Parse(endpoint)
		check(err, "endpoint "+endpoint)
		port, err := strconv.Atoi(raw.Port())
		check(err, "endpoint port "+endpoint)
		addresses[raw.Scheme] = consulapi.ServiceAddress{Address: endpoint, Port: port}
		if i == 0 {
			reg.Address, reg.Port = raw.Hostname(), port
		}
	}
	reg.TaggedAddresses = addresses
	return reg
}

// kratosConsulList reads like contrib/registry/consul Client.Service:
// passing entries, version from the `version=` tag, endpoints from the
// tagged addresses (the lan/wan ones skipped), else http://address:port.
func kratosConsulList(c *consulapi.Client, name string) ([]*registry.ServiceInstance, error) {
	entries, _, err := c.Health().Service(name, "", true, nil)
	if err != nil {
		return nil, err
	}
	items := []*registry.ServiceInstance{}
	for _, entry := range entries {
		var version string
		for _, tag := range entry.Service.Tags {
			if v, ok := strings.CutPrefix(tag, "version="); ok {
				version = v
			}
		}
		endpoints := []string{}
		for scheme, addr := range entry.Service.TaggedAddresses {
			if scheme == "lan_ipv4" || scheme == "wan_ipv4" || scheme == "lan_ipv6" || scheme == "wan_ipv6" {
				continue
			}
			endpoints = append(endpoints, addr.Address)
		}
		if len(endpoints) == 0 && entry.Service.Address != "" && entry.Service.Port != 0 {
			endpoints = append(endpoints, fmt.Sprintf("http://%s:%d", entry.Service.Address, entry.Service.Port))
		}
		sort.Strings(endpoints)
		items = append(items, &registry.ServiceInstance{ID: entry.Service.ID, Name: entry.Service.Service,
			Metadata: entry.Service.Meta, Version: version, Endpoints: endpoints})
	}
	return items, nil
}

func waitInstancer(inst sd.Instancer, want int) []string {
	ch := make(chan sd.Event, 16)
	inst.Register(ch)
	deadline := time.After(waitLimit)
	var last []string
	for {
		select {
		case ev := <-ch:
			if ev.Err == nil {
				last = ev.Instances
				if len(last) >= want {
					sort.Strings(last)
					return last
				}
			}
		case <-deadline:
			printJSON(last)
			fail(fmt.Sprintf("saw %d instances, wanted %d", len(last), want))
		}
	}
}

func waitList[T any](want int, list func() ([]T, error)) []T {
	deadline := time.Now().Add(waitLimit)
	for {
		items, err := list()
		if err == nil && len(items) >= want {
			return items
		}
		if time.Now().After(deadline) {
			printJSON(items)
			fail(fmt.Sprintf("saw %d instances, wanted %d (last error: %v)", len(items), want, err))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func etcdClient(endpoint string) etcdv3.Client {
	client, err := etcdv3.NewClient(context.Background(), []string{endpoint}, etcdv3.ClientOptions{DialTimeout: 5 * time.Second, DialKeepAlive: 5 * time.Second})
	check(err, "go-kit etcdv3 client")
	return client
}

func etcdRaw(endpoint string) *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	check(err, "etcd client")
	return cli
}

func zkConn(servers string) *zk.Conn {
	conn, _, err := zk.Connect(strings.Split(servers, ","), 10*time.Second, zk.WithLogInfo(false))
	check(err, "zk connect")
	return conn
}

func consulClient(addr string) *consulapi.Client {
	c, err := consulapi.NewClient(&consulapi.Config{Address: addr})
	check(err, "consul client")
	return c
}

func hold() {
	fmt.Println("registered")
	_, _ = io.Copy(io.Discard, os.Stdin)
}

func printJSON(v any) {
	out, _ := json.Marshal(v)
	fmt.Println(string(out))
}

func splitList(s string) []string {
	out := []string{}
	for _, part := range strings.Split(s, ",") {
		if part != "" {
			out = append(out, part)
		}
	}
	return out
}

func pairs(s string) map[string]string {
	out := map[string]string{}
	for _, part := range splitList(s) {
		k, v, _ := strings.Cut(part, "=")
		out[k] = v
	}
	return out
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	check(err, "number "+s)
	return n
}

func need(args []string, n int) {
	if len(args) != n {
		fail(fmt.Sprintf("%s takes %d arguments, got %d", os.Args[1], n, len(args)))
	}
}

func check(err error, what string) {
	if err != nil {
		fail(what + ": " + err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "peers:", msg)
	os.Exit(1)
}
