// Command checkout-service is examples/zero-trust's checkout-service written with go-spiffe v2
// the way its documentation shows: an X509Source from the Workload API
// (SPIFFE_ENDPOINT_SOCKET) and tlsconfig.MTLSClientConfig with tlsconfig.AuthorizeID, so it
// talks only to a server presenting payment-processor's SPIFFE ID.
//
//	checkout-service [--server 127.0.0.1:8443] [--server-id ID] [--spiffe-id ID] [--jwt]
//	                 [--jwt-audience AUD] [--method POST] [--path /v1/payments]
//	                 [--repeat 1] [--interval 1s | --rate N]
//
// It speaks the Rust checkout-service's protocol and prints the same line per call:
// "[i] METHOD PATH -> STATUS allowed|refused|failed: BODY [server ID serial=.. ca=..]". With
// --jwt each call also carries a JWT-SVID from workloadapi.FetchJWTSVID (audience: the
// server's SPIFFE ID, or --jwt-audience) as `Authorization: Bearer`. Each call is a new
// connection; the last line counts the outcomes. Exit status: 0 when every call got a 2xx,
// 3 when the server refused one (403) and nothing else failed, 1 on any other failure (TLS,
// wrong server identity, 401).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"sigil.test/go/internal/zerotrust"
)

func main() {
	server := flag.String("server", "127.0.0.1:8443", "payment-processor's address (host:port)")
	serverIDFlag := flag.String("server-id", "", "the only server identity to talk to (default: spiffe://<our trust domain>"+zerotrust.PaymentProcessorPath+")")
	spiffeID := flag.String("spiffe-id", "", "our SVID when entitled to several (default: the one whose path is "+zerotrust.CheckoutServicePath+", else the Workload API's first)")
	withJWT := flag.Bool("jwt", false, "send a JWT-SVID (Authorization: Bearer) with each call")
	audience := flag.String("jwt-audience", "", "the JWT-SVID's audience (default: the server's SPIFFE ID)")
	method := flag.String("method", http.MethodPost, "HTTP method")
	path := flag.String("path", zerotrust.PaymentsPath, "route to call")
	repeat := flag.Int("repeat", 1, "number of calls")
	interval := flag.Duration("interval", time.Second, "pause between calls")
	rate := flag.Int("rate", 0, "calls per second, each started on schedule (instead of --interval)")
	startup := flag.Duration("startup-timeout", 30*time.Second, "how long to wait for a first SVID")
	flag.Parse()
	log.SetFlags(0)

	source, own, err := zerotrust.X509Source(*startup, *spiffeID, zerotrust.CheckoutServicePath)
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()
	serverID := zerotrust.PeerID("server-id", *serverIDFlag, own.TrustDomain(), zerotrust.PaymentProcessorPath)
	if *audience == "" {
		*audience = serverID.String()
	}
	client := &http.Client{
		Transport: &http.Transport{
			TLSClientConfig:   tlsconfig.MTLSClientConfig(source, source, tlsconfig.AuthorizeID(serverID)),
			DisableKeepAlives: true, // a handshake per call: rotations show at once
		},
		Timeout: 30 * time.Second,
	}
	fmt.Printf("checkout-service (Go, go-spiffe) as %s, calling %s expecting %s\n", own, *server, serverID)

	counts := map[string]int{}
	start := time.Now()
	for i := 1; i <= *repeat; i++ {
		if i > 1 {
			if *rate > 0 { // calls start 1/rate apart, however long each takes
				time.Sleep(time.Until(start.Add(time.Duration(i-1) * time.Second / time.Duration(*rate))))
			} else {
				time.Sleep(*interval)
			}
		}
		prefix := fmt.Sprintf("[%d] %s %s", i, *method, *path)
		line, outcome := call(client, own, *server, *method, *path, *withJWT, *audience, i)
		fmt.Printf("%s -> %s\n", prefix, line)
		counts[outcome]++
	}
	elapsed := time.Since(start)
	fmt.Printf("%d calls in %.1fs (%.1f/s): %d allowed, %d refused, %d failed\n", *repeat, elapsed.Seconds(),
		float64(*repeat)/elapsed.Seconds(), counts["allowed"], counts["refused"], counts["failed"])
	switch {
	case counts["failed"] > 0:
		os.Exit(1)
	case counts["refused"] > 0:
		os.Exit(3)
	}
}

// call makes one request on a new connection and says how it ended.
func call(client *http.Client, own spiffeid.ID, server, method, path string, withJWT bool, audience string, n int) (string, string) {
	order := fmt.Sprintf(`{"order":"order-%d","amount_cents":4200}`, n)
	req, err := http.NewRequest(method, "https://"+server+path, strings.NewReader(order))
	if err != nil {
		return "failed: " + err.Error(), "failed"
	}
	req.Host = "payment-processor"
	req.Header.Set("Content-Type", "application/json")
	if withJWT {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		token, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience, Subject: own})
		if err != nil {
			return "failed: fetching a JWT-SVID: " + err.Error(), "failed"
		}
		req.Header.Set("Authorization", "Bearer "+token.Marshal())
	}
	resp, err := client.Do(req)
	if err != nil {
		// A server with another SPIFFE ID fails tlsconfig.AuthorizeID: "unexpected ID ...".
		return "failed: " + err.Error(), "failed"
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	outcome := "failed"
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		outcome = "allowed"
	case resp.StatusCode == http.StatusForbidden:
		outcome = "refused"
	}
	peer := "?"
	if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
		peer = zerotrust.Summary(resp.TLS.PeerCertificates[0])
	}
	return fmt.Sprintf("%d %s: %s [server %s]", resp.StatusCode, outcome, strings.TrimSpace(string(body)), peer), outcome
}
