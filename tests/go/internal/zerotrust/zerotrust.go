// Package zerotrust holds what the Go checkout-service and payment-processor share: the
// example's SPIFFE IDs and routes (the same as examples/zero-trust's Rust services), and an
// X509Source from the Workload API the way go-spiffe documents it.
package zerotrust

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

const (
	// PaymentsPath is the one route payment-processor serves (POST only).
	PaymentsPath = "/v1/payments"
	// CheckoutServicePath is the SPIFFE ID path of checkout-service in every trust domain.
	CheckoutServicePath = "/ns/payments/sa/checkout-service"
	// PaymentProcessorPath is the SPIFFE ID path of payment-processor.
	PaymentProcessorPath = "/ns/payments/sa/payment-processor"
)

// X509Source connects to the Workload API named by SPIFFE_ENDPOINT_SOCKET and waits up to
// timeout for a first X509 context. Its default SVID is exactly `want` when set, else the
// first SVID whose path is preferPath, else the Workload API's first SVID. Returns the source
// and the SPIFFE ID of that SVID.
func X509Source(timeout time.Duration, want string, preferPath string) (*workloadapi.X509Source, spiffeid.ID, error) {
	var exact spiffeid.ID
	if want != "" {
		id, err := spiffeid.FromString(want)
		if err != nil {
			return nil, spiffeid.ID{}, fmt.Errorf("--spiffe-id %q: %w", want, err)
		}
		exact = id
	}
	picker := func(svids []*x509svid.SVID) *x509svid.SVID {
		for _, s := range svids {
			if (!exact.IsZero() && s.ID == exact) || (exact.IsZero() && s.ID.Path() == preferPath) {
				return s
			}
		}
		if exact.IsZero() && len(svids) > 0 {
			return svids[0]
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithDefaultX509SVIDPicker(picker))
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("no X509-SVID from the Workload API within %s (SPIFFE_ENDPOINT_SOCKET set, agent running, workload registered?): %w", timeout, err)
	}
	svid, err := source.GetX509SVID()
	if err != nil {
		source.Close()
		return nil, spiffeid.ID{}, fmt.Errorf("the Workload API offers no SVID for %q: %w", want, err)
	}
	return source, svid.ID, nil
}

// PeerID is the SPIFFE ID named by flag `name` (value `given`), else the one with `path` in
// trust domain td.
func PeerID(name, given string, td spiffeid.TrustDomain, path string) spiffeid.ID {
	if given == "" {
		return spiffeid.RequireFromPath(td, path)
	}
	id, err := spiffeid.FromString(given)
	if err != nil {
		log.Fatalf("--%s %q: %v", name, given, err)
	}
	return id
}

// Summary is how a peer's leaf is printed: SPIFFE ID, serial and authority key ID (hex), so a
// rotation shows.
func Summary(leaf *x509.Certificate) string {
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return fmt.Sprintf("<no SPIFFE ID: %v>", err)
	}
	aki := "-"
	if len(leaf.AuthorityKeyId) > 0 {
		aki = hex.EncodeToString(leaf.AuthorityKeyId)
	}
	return fmt.Sprintf("%s serial=%s ca=%s", id, Serial(leaf), aki)
}

// Serial is the leaf's serial number as its DER content, hex (a leading 00 when the high bit
// is set), as the Rust services print it.
func Serial(leaf *x509.Certificate) string {
	b := leaf.SerialNumber.Bytes()
	if len(b) > 0 && b[0]&0x80 != 0 {
		b = append([]byte{0}, b...)
	}
	return hex.EncodeToString(b)
}
