// Command payment-processor is examples/zero-trust's payment-processor written with go-spiffe
// v2 the way its documentation shows: an X509Source from the Workload API
// (SPIFFE_ENDPOINT_SOCKET) and tlsconfig.MTLSServerConfig with tlsconfig.AuthorizeID, so only
// checkout-service completes the handshake; every other identity gets no connection.
//
//	payment-processor [--listen 127.0.0.1:8443] [--spiffe-id ID] [--client-id ID] [--require-jwt]
//
// It speaks the Rust payment-processor's protocol: HTTPS, `POST /v1/payments` answered 200
// "payment pay-N accepted for <peer> (<n> bytes of order)", any other route 403. A request
// carrying `Authorization: Bearer <JWT-SVID>` (audience: our SPIFFE ID) has it validated twice,
// with jwtsvid.ParseAndValidate against the bundles of workloadapi.FetchJWTBundles and with
// workloadapi.ValidateJWTSVID, and its subject must be the mTLS peer; a bad token gets 401.
// --require-jwt makes the token mandatory. Logs one line per request to stderr.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"sigil.test/go/internal/zerotrust"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8443", "address to listen on")
	spiffeID := flag.String("spiffe-id", "", "the SVID to serve with (default: the one whose path is "+zerotrust.PaymentProcessorPath+", else the Workload API's first)")
	clientID := flag.String("client-id", "", "the only client identity accepted (default: spiffe://<our trust domain>"+zerotrust.CheckoutServicePath+")")
	requireJWT := flag.Bool("require-jwt", false, "refuse requests without a JWT-SVID (Authorization: Bearer)")
	startup := flag.Duration("startup-timeout", 30*time.Second, "how long to wait for a first SVID")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.LUTC)

	source, own, err := zerotrust.X509Source(*startup, *spiffeID, zerotrust.PaymentProcessorPath)
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()
	allowed := zerotrust.PeerID("client-id", *clientID, own.TrustDomain(), zerotrust.CheckoutServicePath)

	var payments atomic.Uint64
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
		if err != nil { // the handshake authorized it: cannot happen
			http.Error(w, "no SPIFFE ID", http.StatusInternalServerError)
			return
		}
		status, body := serve(r, peer, own, *requireJWT, &payments)
		log.Printf("request peer=%s peer_serial=%s route=%s %s status=%d", peer, zerotrust.Serial(r.TLS.PeerCertificates[0]), r.Method, r.URL.Path, status)
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(status)
		fmt.Fprintln(w, body)
	})
	server := &http.Server{
		Handler:           handler,
		TLSConfig:         tlsconfig.MTLSServerConfig(source, source, tlsconfig.AuthorizeID(allowed)),
		ReadHeaderTimeout: 10 * time.Second,
		// Refused handshakes are logged here: "http: TLS handshake error from ...".
		ErrorLog: log.Default(),
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("binding %s: %v", *listen, err)
	}
	log.Printf("payment-processor (Go, go-spiffe) listening on %s as %s; only %s may connect", *listen, own, allowed)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-stop
		log.Print("payment-processor stopping")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = server.Shutdown(ctx)
	}()
	if err := server.ServeTLS(listener, "", ""); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}

// serve decides one request from an authorized peer: the route, then the JWT-SVID if any.
func serve(r *http.Request, peer, own spiffeid.ID, requireJWT bool, payments *atomic.Uint64) (int, string) {
	if r.Method != http.MethodPost || r.URL.Path != zerotrust.PaymentsPath {
		return http.StatusForbidden, fmt.Sprintf("forbidden: route %s %s is not allowed for any identity (only POST %s exists)", r.Method, r.URL.Path, zerotrust.PaymentsPath)
	}
	jwtNote := ""
	if token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		subject, err := validateJWT(r.Context(), token, own.String())
		if err != nil {
			return http.StatusUnauthorized, "unauthorized: JWT-SVID: " + err.Error()
		}
		if subject != peer {
			return http.StatusUnauthorized, fmt.Sprintf("unauthorized: JWT-SVID subject %s is not the mTLS peer %s", subject, peer)
		}
		jwtNote = fmt.Sprintf(", JWT-SVID of %s valid", subject)
	} else if requireJWT {
		return http.StatusUnauthorized, "unauthorized: a JWT-SVID (Authorization: Bearer) is required"
	}
	order, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	n := payments.Add(1)
	return http.StatusOK, fmt.Sprintf("payment pay-%d accepted for %s (%d bytes of order%s)", n, peer, len(order), jwtNote)
}

// validateJWT checks token for audience locally (jwtsvid.ParseAndValidate with the JWT bundles
// of workloadapi.FetchJWTBundles) and by the agent (workloadapi.ValidateJWTSVID); both must
// accept it and agree on the subject.
func validateJWT(ctx context.Context, token, audience string) (spiffeid.ID, error) {
	bundles, err := workloadapi.FetchJWTBundles(ctx)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("fetching JWT bundles: %w", err)
	}
	local, err := jwtsvid.ParseAndValidate(token, bundles, []string{audience})
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("local validation: %w", err)
	}
	remote, err := workloadapi.ValidateJWTSVID(ctx, token, audience)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("the Workload API's validation: %w", err)
	}
	if local.ID != remote.ID {
		return spiffeid.ID{}, fmt.Errorf("local validation says %s, the Workload API %s", local.ID, remote.ID)
	}
	return local.ID, nil
}
