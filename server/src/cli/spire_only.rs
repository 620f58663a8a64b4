//! Flags of SPIRE's `spire-server` commands that Sigil's do not have: each refused (exit 64)
//! saying so and why, where clap alone would say "unexpected argument".

use sigil_common::cli_args::SpireOnlyFlag;

const DOWNSTREAM: &str =
    "Sigil has no downstream entries (nested SPIRE servers), so none would match";
const FEDERATES_FILTER: &str = "entries are not filtered by federated trust domain; `entry show -output json` lists `federates_with`";
const STORE_SVID: &str = "Sigil has no SVIDStore plugins to hand such SVIDs to";

pub(super) const FLAGS: &[SpireOnlyFlag] = &[
    SpireOnlyFlag {
        command: &["entry", "show"],
        flag: "downstream",
        why: DOWNSTREAM,
    },
    SpireOnlyFlag {
        command: &["entry", "show"],
        flag: "federatesWith",
        why: FEDERATES_FILTER,
    },
    SpireOnlyFlag {
        command: &["entry", "show"],
        flag: "matchFederatesWithOn",
        why: FEDERATES_FILTER,
    },
    SpireOnlyFlag {
        command: &["entry", "count"],
        flag: "downstream",
        why: DOWNSTREAM,
    },
    SpireOnlyFlag {
        command: &["entry", "count"],
        flag: "federatesWith",
        why: FEDERATES_FILTER,
    },
    SpireOnlyFlag {
        command: &["entry", "count"],
        flag: "matchFederatesWithOn",
        why: FEDERATES_FILTER,
    },
    SpireOnlyFlag {
        command: &["entry", "create"],
        flag: "storeSVID",
        why: STORE_SVID,
    },
    SpireOnlyFlag {
        command: &["entry", "update"],
        flag: "storeSVID",
        why: STORE_SVID,
    },
    SpireOnlyFlag {
        command: &["entry", "create"],
        flag: "jwtSVIDIncludeJTI",
        why: "Sigil's JWT-SVIDs carry no `jti` claim",
    },
];
