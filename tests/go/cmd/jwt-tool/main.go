// Command jwt-tool fetches and validates JWT-SVIDs through the Workload API named by
// SPIFFE_ENDPOINT_SOCKET, with go-spiffe v2 the way its documentation shows, so a test can
// hand a token from one agent (SPIRE's or Sigil's) to another.
//
//	jwt-tool fetch --audience AUD [--spiffe-id ID]
//	    prints the JWT-SVID (workloadapi.FetchJWTSVID) on stdout
//	jwt-tool validate --audience AUD --token TOKEN
//	    asks the agent (workloadapi.ValidateJWTSVID), validates it locally too
//	    (jwtsvid.ParseAndValidate with the JWT bundles of workloadapi.FetchJWTBundles), and
//	    prints {"spiffe_id": ..., "audience": [...], "claims": {...}} on stdout; both must
//	    accept it and agree on the subject
//
// Exit status: 0 on success, 1 when the agent refuses or fails (the error on stderr), 2 on
// bad usage.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	audience := flags.String("audience", "", "the JWT-SVID's audience (required)")
	spiffeID := flags.String("spiffe-id", "", "fetch: the SVID's subject when entitled to several")
	token := flags.String("token", "", "validate: the JWT-SVID to validate")
	timeout := flags.Duration("timeout", 10*time.Second, "how long to wait for the agent")
	_ = flags.Parse(os.Args[2:])
	if *audience == "" {
		usage()
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	switch os.Args[1] {
	case "fetch":
		params := jwtsvid.Params{Audience: *audience}
		if *spiffeID != "" {
			id, err := spiffeid.FromString(*spiffeID)
			if err != nil {
				fail("--spiffe-id: %v", err)
			}
			params.Subject = id
		}
		svid, err := workloadapi.FetchJWTSVID(ctx, params)
		if err != nil {
			fail("FetchJWTSVID: %v", err)
		}
		fmt.Println(svid.Marshal())
	case "validate":
		if *token == "" {
			usage()
		}
		svid, err := workloadapi.ValidateJWTSVID(ctx, *token, *audience)
		if err != nil {
			fail("ValidateJWTSVID: %v", err)
		}
		bundles, err := workloadapi.FetchJWTBundles(ctx)
		if err != nil {
			fail("FetchJWTBundles: %v", err)
		}
		local, err := jwtsvid.ParseAndValidate(*token, bundles, []string{*audience})
		if err != nil {
			fail("ParseAndValidate with the agent's JWT bundles: %v", err)
		}
		if local.ID != svid.ID {
			fail("the agent says %s, local validation %s", svid.ID, local.ID)
		}
		out, _ := json.Marshal(map[string]any{
			"spiffe_id": svid.ID.String(),
			"audience":  svid.Audience,
			"claims":    svid.Claims,
		})
		fmt.Println(string(out))
	default:
		usage()
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "jwt-tool: "+format+"\n", args...)
	os.Exit(1)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: jwt-tool fetch --audience AUD [--spiffe-id ID] | jwt-tool validate --audience AUD --token TOKEN")
	os.Exit(2)
}
