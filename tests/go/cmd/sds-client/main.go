// Command sds-client is an Envoy-like SDS v3 client driven line by line by a test.
//
// It dials the agent's Unix socket with grpc-go and speaks the Secret Discovery Service with
// go-control-plane's Envoy API types, as Envoy does: the first request of each stream carries a
// Node (user agent "envoy", build version from -envoy-version), responses are ACKed with their
// version_info and nonce, NACKed with error_detail. It never sends the Workload API's
// `workload.spiffe.io` header.
//
// Commands, one per line on stdin (names are separated by spaces; none means "every resource"):
//
//	open <stream> [names...]       open a StreamSecrets stream and send the first request
//	ack <stream>                   ACK the last response received on <stream>
//	nack <stream> <message...>     NACK it (error_detail with <message>)
//	subscribe <stream> [names...]  send a request with new resource names
//	request <stream> <nonce> <type_url> [names...]
//	                               send a request as given ("-" for the last nonce, or for
//	                               the Secret type): a stale nonce, another type
//	close <stream>                 half-close the stream (CloseSend)
//	fetch [names...]               FetchSecrets (unary)
//	delta                          open DeltaSecrets, send one request, report the status
//	quit                           exit 0
//
// Output, one JSON object per line on stdout, each with an "event":
//
//	response  a StreamSecrets response: stream, version_info, nonce, type_url, resources
//	error     a stream ended: stream, code (gRPC code name), message
//	fetch     a FetchSecrets answer: version_info, type_url, resources; or code and message
//	delta     DeltaSecrets: code and message
//	done      a command was sent: cmd (the command line); errors in "error"
//
// Each resource is reported as a test asserts on it: its name; kind tls_certificate or
// validation_context; for a certificate the leaf's URI SAN, serial, notAfter, whether the key
// is PKCS#8 and matches the leaf, and the names of the validation contexts (in the same
// response or earlier on the stream) the chain verifies against; for a validation context the
// validator (spiffe or trusted_ca), the trust domains in order and their CA counts. Every
// Secret (and SPIFFECertValidatorConfig) is also checked with Envoy's own ValidateAll().
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// SecretTypeURL is the type of every SDS resource.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// SpiffeValidatorName is the name of Envoy's SPIFFE certificate validator extension.
const SpiffeValidatorName = "envoy.tls.cert_validator.spiffe"

type options struct {
	socket       string
	nodeID       string
	cluster      string
	envoyVersion string
	metadata     []string
}

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var o options
	var md stringList
	flag.StringVar(&o.socket, "socket", "", "the agent's Unix socket path (required)")
	flag.StringVar(&o.nodeID, "node-id", "sidecar~10.0.0.1~checkout~default.svc.cluster.local", "Node id")
	flag.StringVar(&o.cluster, "cluster", "checkout-service", "Node cluster")
	flag.StringVar(&o.envoyVersion, "envoy-version", "1.40.0", "Envoy build version sent in the Node (major.minor.patch)")
	flag.Var(&md, "metadata", "Node metadata key=value (a string; value true/false as a bool with key:bool=...); repeat")
	flag.Parse()
	o.metadata = md
	if o.socket == "" {
		fmt.Fprintln(os.Stderr, "sds-client: -socket is required")
		os.Exit(2)
	}
	node, err := o.node()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sds-client:", err)
		os.Exit(2)
	}
	conn, err := grpc.NewClient("unix://"+o.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "sds-client: dial:", err)
		os.Exit(1)
	}
	defer conn.Close()
	d := &driver{
		node:    node,
		client:  secretv3.NewSecretDiscoveryServiceClient(conn),
		streams: map[string]*stream{},
		out:     json.NewEncoder(os.Stdout),
	}
	if err := d.run(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "sds-client:", err)
		os.Exit(1)
	}
}

// node is the Node Envoy sends: id, cluster, user agent "envoy" with a semantic build version.
func (o *options) node() (*corev3.Node, error) {
	parts := strings.Split(o.envoyVersion, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("-envoy-version %q: want major.minor.patch", o.envoyVersion)
	}
	var v [3]uint32
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("-envoy-version %q: %v", o.envoyVersion, err)
		}
		v[i] = uint32(n)
	}
	fields := map[string]*structpb.Value{}
	for _, kv := range o.metadata {
		k, val, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("-metadata %q: want key=value", kv)
		}
		if name, isBool := strings.CutSuffix(k, ":bool"); isBool {
			fields[name] = structpb.NewBoolValue(val == "true")
		} else {
			fields[k] = structpb.NewStringValue(val)
		}
	}
	n := &corev3.Node{
		Id:            o.nodeID,
		Cluster:       o.cluster,
		UserAgentName: "envoy",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{
			UserAgentBuildVersion: &corev3.BuildVersion{
				Version: &typev3.SemanticVersion{MajorNumber: v[0], MinorNumber: v[1], Patch: v[2]},
			},
		},
	}
	if len(fields) > 0 {
		n.Metadata = &structpb.Struct{Fields: fields}
	}
	return n, n.ValidateAll()
}

type driver struct {
	node    *corev3.Node
	client  secretv3.SecretDiscoveryServiceClient
	streams map[string]*stream
	outMu   sync.Mutex
	out     *json.Encoder
}

// emit prints one event line; safe from any goroutine.
func (d *driver) emit(v map[string]any) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	if err := d.out.Encode(v); err != nil {
		fmt.Fprintln(os.Stderr, "sds-client: stdout:", err)
		os.Exit(1)
	}
}

// stream is one StreamSecrets stream, with what Envoy remembers of it.
type stream struct {
	label  string
	cancel context.CancelFunc
	grpc   grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	mu     sync.Mutex
	names  []string
	// lastVersion and lastNonce: the latest response; acked: the version last accepted.
	lastVersion, lastNonce, acked string
	// contexts: the latest validation context seen on this stream, by name.
	contexts map[string]*tlsv3.CertificateValidationContext
	// validators: the latest SPIFFE validator configs seen on this stream, by name.
	validators map[string]*tlsv3.SPIFFECertValidatorConfig
}

func (d *driver) run(in io.Reader) error {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		fields := strings.Fields(line)
		if fields[0] == "quit" {
			return nil
		}
		err := d.command(fields[0], fields[1:], line)
		done := map[string]any{"event": "done", "cmd": line}
		if err != nil {
			done["error"] = err.Error()
		}
		d.emit(done)
	}
	return sc.Err()
}

func (d *driver) command(cmd string, args []string, line string) error {
	switch cmd {
	case "open":
		if len(args) < 1 {
			return errors.New("open <stream> [names...]")
		}
		return d.open(args[0], args[1:])
	case "ack", "nack", "subscribe", "request", "close":
		if len(args) < 1 {
			return fmt.Errorf("%s <stream> ...", cmd)
		}
		s, ok := d.streams[args[0]]
		if !ok {
			return fmt.Errorf("no stream %q", args[0])
		}
		switch cmd {
		case "ack":
			return s.ack()
		case "nack":
			_, msg, _ := strings.Cut(strings.TrimSpace(strings.TrimPrefix(line, "nack")), " ")
			return s.nack(strings.TrimSpace(msg))
		case "subscribe":
			return s.subscribe(args[1:])
		case "request":
			if len(args) < 3 {
				return errors.New("request <stream> <nonce|-> <type_url|-> [names...]")
			}
			return s.request(args[1], args[2], args[3:])
		default:
			return s.grpc.CloseSend()
		}
	case "fetch":
		d.fetch(args)
		return nil
	case "delta":
		d.delta()
		return nil
	default:
		return fmt.Errorf("unknown command %q", cmd)
	}
}

func (d *driver) open(label string, names []string) error {
	if _, ok := d.streams[label]; ok {
		return fmt.Errorf("stream %q already open", label)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g, err := d.client.StreamSecrets(ctx)
	if err != nil {
		cancel()
		return err
	}
	s := &stream{
		label: label, cancel: cancel, grpc: g, names: names,
		contexts:   map[string]*tlsv3.CertificateValidationContext{},
		validators: map[string]*tlsv3.SPIFFECertValidatorConfig{},
	}
	d.streams[label] = s
	first := &discoveryv3.DiscoveryRequest{Node: d.node, ResourceNames: names, TypeUrl: SecretTypeURL}
	if err := g.Send(first); err != nil {
		return err
	}
	go d.receive(s)
	return nil
}

// receive reports every response on s, then how the stream ended.
func (d *driver) receive(s *stream) {
	for {
		resp, err := s.grpc.Recv()
		if err != nil {
			ev := map[string]any{"event": "error", "stream": s.label}
			if errors.Is(err, io.EOF) {
				ev["code"] = codes.OK.String()
				ev["message"] = "EOF"
			} else {
				st := status.Convert(err)
				ev["code"] = st.Code().String()
				ev["message"] = st.Message()
			}
			d.emit(ev)
			return
		}
		s.mu.Lock()
		s.lastVersion, s.lastNonce = resp.GetVersionInfo(), resp.GetNonce()
		ev := map[string]any{
			"event":        "response",
			"stream":       s.label,
			"version_info": resp.GetVersionInfo(),
			"nonce":        resp.GetNonce(),
			"type_url":     resp.GetTypeUrl(),
			"resources":    reportResources(resp, s.contexts, s.validators),
		}
		s.mu.Unlock()
		d.emit(ev)
	}
}

func (s *stream) ack() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acked = s.lastVersion
	return s.grpc.Send(&discoveryv3.DiscoveryRequest{
		VersionInfo: s.acked, ResourceNames: s.names, TypeUrl: SecretTypeURL, ResponseNonce: s.lastNonce,
	})
}

// nack rejects the last response as Envoy does: the version last accepted, the rejected
// response's nonce, and an error_detail.
func (s *stream) nack(msg string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grpc.Send(&discoveryv3.DiscoveryRequest{
		VersionInfo: s.acked, ResourceNames: s.names, TypeUrl: SecretTypeURL, ResponseNonce: s.lastNonce,
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.Internal), Message: msg},
	})
}

func (s *stream) subscribe(names []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.names = names
	return s.grpc.Send(&discoveryv3.DiscoveryRequest{
		VersionInfo: s.acked, ResourceNames: names, TypeUrl: SecretTypeURL, ResponseNonce: s.lastNonce,
	})
}

// request sends a request as the test spells it; it changes nothing the stream remembers.
func (s *stream) request(nonce, typeURL string, names []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if nonce == "-" {
		nonce = s.lastNonce
	}
	if typeURL == "-" {
		typeURL = SecretTypeURL
	}
	return s.grpc.Send(&discoveryv3.DiscoveryRequest{
		VersionInfo: s.acked, ResourceNames: names, TypeUrl: typeURL, ResponseNonce: nonce,
	})
}

func (d *driver) fetch(names []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := d.client.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{
		Node: d.node, ResourceNames: names, TypeUrl: SecretTypeURL,
	})
	ev := map[string]any{"event": "fetch"}
	if err != nil {
		st := status.Convert(err)
		ev["code"], ev["message"] = st.Code().String(), st.Message()
	} else {
		ev["code"] = codes.OK.String()
		ev["version_info"] = resp.GetVersionInfo()
		ev["nonce"] = resp.GetNonce()
		ev["type_url"] = resp.GetTypeUrl()
		ev["resources"] = reportResources(resp, map[string]*tlsv3.CertificateValidationContext{},
			map[string]*tlsv3.SPIFFECertValidatorConfig{})
	}
	d.emit(ev)
}

func (d *driver) delta() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev := map[string]any{"event": "delta"}
	g, err := d.client.DeltaSecrets(ctx)
	if err == nil {
		err = g.Send(&discoveryv3.DeltaDiscoveryRequest{
			Node: d.node, TypeUrl: SecretTypeURL, ResourceNamesSubscribe: []string{"default"},
		})
		if err == nil || errors.Is(err, io.EOF) {
			_, err = g.Recv()
		}
	}
	st := status.Convert(err)
	ev["code"], ev["message"] = st.Code().String(), st.Message()
	d.emit(ev)
}

// reportResources describes each resource of resp. Validation contexts are recorded into
// contexts/validators first so that a certificate is verified against those of the same
// response, or else the latest ones seen before.
func reportResources(resp *discoveryv3.DiscoveryResponse, contexts map[string]*tlsv3.CertificateValidationContext,
	validators map[string]*tlsv3.SPIFFECertValidatorConfig) []map[string]any {
	secrets := make([]*tlsv3.Secret, len(resp.GetResources()))
	reports := make([]map[string]any, len(resp.GetResources()))
	for i, a := range resp.GetResources() {
		r := map[string]any{"any_type_url": a.GetTypeUrl()}
		reports[i] = r
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			r["kind"], r["error"] = "undecodable", err.Error()
			continue
		}
		secrets[i] = s
		r["name"] = s.GetName()
		r["valid"] = validity(s.ValidateAll())
		if vc := s.GetValidationContext(); vc != nil {
			r["kind"] = "validation_context"
			contexts[s.GetName()] = vc
			if cfg := describeValidationContext(r, vc); cfg != nil {
				validators[s.GetName()] = cfg
			}
		}
	}
	for i, s := range secrets {
		if s == nil {
			continue
		}
		switch {
		case s.GetTlsCertificate() != nil:
			reports[i]["kind"] = "tls_certificate"
			describeCertificate(reports[i], s.GetTlsCertificate(), contexts, validators)
		case s.GetValidationContext() != nil:
		default:
			reports[i]["kind"] = "other"
		}
	}
	return reports
}

func validity(err error) string {
	if err != nil {
		return err.Error()
	}
	return "ok"
}

// describeValidationContext reports vc into r; returns its SPIFFE validator config if it has one.
func describeValidationContext(r map[string]any, vc *tlsv3.CertificateValidationContext) *tlsv3.SPIFFECertValidatorConfig {
	if ca := vc.GetTrustedCa(); ca != nil {
		r["validator"] = "trusted_ca"
		certs, err := parsePEMCerts(ca.GetInlineBytes())
		r["ca_certs"] = len(certs)
		if err != nil {
			r["error"] = "trusted_ca: " + err.Error()
		}
		return nil
	}
	custom := vc.GetCustomValidatorConfig()
	if custom == nil {
		r["validator"] = "none"
		return nil
	}
	r["validator"] = "custom"
	r["custom_validator_name"] = custom.GetName()
	r["typed_config_type_url"] = custom.GetTypedConfig().GetTypeUrl()
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	if err := custom.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		r["error"] = "typed_config: " + err.Error()
		return nil
	}
	if custom.GetName() == SpiffeValidatorName {
		r["validator"] = "spiffe"
	}
	r["spiffe_config_valid"] = validity(cfg.ValidateAll())
	names := []string{}
	counts := map[string]int{}
	for _, td := range cfg.GetTrustDomains() {
		names = append(names, td.GetName())
		certs, err := parsePEMCerts(td.GetTrustBundle().GetInlineBytes())
		counts[td.GetName()] = len(certs)
		if err != nil {
			r["error"] = "trust bundle of " + td.GetName() + ": " + err.Error()
		}
	}
	r["trust_domains"] = names
	r["bundle_certs"] = counts
	return cfg
}

func describeCertificate(r map[string]any, tc *tlsv3.TlsCertificate, contexts map[string]*tlsv3.CertificateValidationContext,
	validators map[string]*tlsv3.SPIFFECertValidatorConfig) {
	chain, err := parsePEMCerts(tc.GetCertificateChain().GetInlineBytes())
	r["chain_len"] = len(chain)
	if err != nil || len(chain) == 0 {
		r["error"] = fmt.Sprintf("certificate_chain: %v (%d certificates)", err, len(chain))
		return
	}
	leaf := chain[0]
	uris := []string{}
	for _, u := range leaf.URIs {
		uris = append(uris, u.String())
	}
	r["uri_sans"] = uris
	if len(uris) == 1 {
		r["spiffe_id"] = uris[0]
	}
	r["serial"] = leaf.SerialNumber.Text(16)
	r["not_after"] = leaf.NotAfter.UTC().Format(time.RFC3339)
	r["key_pkcs8"], r["key_matches"] = keyMatches(tc.GetPrivateKey().GetInlineBytes(), leaf)

	verified := []string{}
	for name, vc := range contexts {
		var roots *x509.CertPool
		if ca := vc.GetTrustedCa(); ca != nil {
			roots = pool(ca.GetInlineBytes())
		} else if cfg, ok := validators[name]; ok {
			roots = spiffeRoots(cfg, leaf)
		}
		if roots != nil && verifies(chain, roots) {
			verified = append(verified, name)
		}
	}
	sort.Strings(verified)
	r["verified_by"] = verified
}

// spiffeRoots is what Envoy's SPIFFE validator trusts for leaf: the bundle of the trust
// domain named in its SPIFFE ID, nil if cfg has none.
func spiffeRoots(cfg *tlsv3.SPIFFECertValidatorConfig, leaf *x509.Certificate) *x509.CertPool {
	if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" {
		return nil
	}
	for _, td := range cfg.GetTrustDomains() {
		if td.GetName() == leaf.URIs[0].Host {
			return pool(td.GetTrustBundle().GetInlineBytes())
		}
	}
	return nil
}

func verifies(chain []*x509.Certificate, roots *x509.CertPool) bool {
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	return err == nil
}

func pool(pemBytes []byte) *x509.CertPool {
	certs, err := parsePEMCerts(pemBytes)
	if err != nil || len(certs) == 0 {
		return nil
	}
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// keyMatches: whether the key is one PKCS#8 "PRIVATE KEY" block, and whether its public half
// is the leaf's.
func keyMatches(keyPEM []byte, leaf *x509.Certificate) (pkcs8, matches bool) {
	block, rest := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" || len(bytes.TrimSpace(rest)) != 0 {
		return false, false
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return false, false
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return true, false
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	return true, ok && pub.Equal(leaf.PublicKey)
}

func parsePEMCerts(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return certs, fmt.Errorf("unexpected PEM block %q", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return certs, err
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(b)) != 0 {
		return certs, errors.New("trailing data after the PEM blocks")
	}
	return certs, nil
}
