// Command envoy-validate checks Envoy v3 bootstrap files without an Envoy binary, with Envoy's
// own API definitions from go-control-plane.
//
//	envoy-validate FILE.yaml...
//
// Each file is converted from YAML to JSON and read with protojson into a Bootstrap (unknown
// fields and unknown Any types are errors), then checked with the generated ValidateAll().
// That does not look inside google.protobuf.Any, so every Any (typed_config,
// typed_extension_protocol_options, a validator's typed_config...) is unpacked and checked the
// same way, recursively. What Envoy refuses at start-up though the schema allows it is checked
// too: a config source's API type left unset, a V2 transport; resource versions must say V3
// (AUTO would do for Envoy; the examples state it). Last, every cluster a route or an
// envoy_grpc service names must be a static cluster of the file. Prints "ok FILE" per valid file; exits 1 naming each error.
package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// The typed configs the example's bootstraps use: linked in so their Any types resolve.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: envoy-validate FILE.yaml...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		if err := validateFile(path); err != nil {
			fmt.Fprintf(os.Stderr, "invalid %s: %v\n", path, err)
			failed = true
			continue
		}
		fmt.Printf("ok %s\n", path)
	}
	if failed {
		os.Exit(1)
	}
}

func validateFile(path string) error {
	text, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	js, err := yaml.YAMLToJSON(text)
	if err != nil {
		return fmt.Errorf("YAML: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(js, b); err != nil {
		return fmt.Errorf("as envoy.config.bootstrap.v3.Bootstrap: %w", err)
	}
	if err := b.ValidateAll(); err != nil {
		return fmt.Errorf("Bootstrap: %w", err)
	}
	refs := &references{}
	if err := walk(b.ProtoReflect(), "bootstrap", refs); err != nil {
		return err
	}
	return refs.check(b)
}

// validator is what protoc-gen-validate generates on every Envoy message.
type validator interface{ ValidateAll() error }

// references collects the clusters named by routes and envoy_grpc services.
type references struct{ clusters map[string][]string }

func (r *references) add(cluster, where string) {
	if r.clusters == nil {
		r.clusters = map[string][]string{}
	}
	r.clusters[cluster] = append(r.clusters[cluster], where)
}

func (r *references) check(b *bootstrapv3.Bootstrap) error {
	defined := map[string]bool{}
	for _, c := range b.GetStaticResources().GetClusters() {
		defined[c.GetName()] = true
	}
	var missing []string
	for name, where := range r.clusters {
		if !defined[name] {
			missing = append(missing, fmt.Sprintf("cluster %q (named at %s) is not a static cluster", name, strings.Join(where, ", ")))
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		return errors.New(strings.Join(missing, "; "))
	}
	return nil
}

// walk visits every message under m: each Any is unpacked and validated, and cluster
// references are collected.
func walk(m protoreflect.Message, at string, refs *references) error {
	switch v := m.Interface().(type) {
	case *anypb.Any:
		inner, err := v.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("%s: Any %s: %w", at, v.GetTypeUrl(), err)
		}
		if val, ok := inner.(validator); ok {
			if err := val.ValidateAll(); err != nil {
				return fmt.Errorf("%s (%s): %w", at, v.GetTypeUrl(), err)
			}
		}
		return walk(inner.ProtoReflect(), at+"<"+string(proto.MessageName(inner))+">", refs)
	case *corev3.ConfigSource:
		if v.GetResourceApiVersion() != corev3.ApiVersion_V3 {
			return fmt.Errorf("%s: resource_api_version must be V3 (V2 is refused by Envoy, AUTO is not stated)", at)
		}
	case *corev3.ApiConfigSource:
		// Zero is DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE, which ValidateAll lets through but
		// Envoy refuses at start-up.
		if v.GetApiType() == corev3.ApiConfigSource_DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE {
			return fmt.Errorf("%s: api_type is not set (GRPC for SDS)", at)
		}
		if v.GetTransportApiVersion() != corev3.ApiVersion_V3 {
			return fmt.Errorf("%s: transport_api_version must be V3", at)
		}
	case *corev3.GrpcService_EnvoyGrpc:
		refs.add(v.GetClusterName(), at)
	case *routev3.RouteAction:
		if c := v.GetCluster(); c != "" {
			refs.add(c, at)
		}
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		name := at + "." + string(fd.Name())
		switch {
		case fd.IsList():
			l := val.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = walk(l.Get(i).Message(), fmt.Sprintf("%s[%d]", name, i), refs)
			}
		case fd.IsMap():
			if fd.MapValue().Kind() != protoreflect.MessageKind {
				return true
			}
			val.Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				err = walk(v.Message(), fmt.Sprintf("%s[%s]", name, k.String()), refs)
				return err == nil
			})
		default:
			err = walk(val.Message(), name, refs)
		}
		return err == nil
	})
	return err
}
