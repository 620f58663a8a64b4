//! Flags of SPIRE's `spire-server` commands that Sigil's do not have: each refused (exit 64)
//! saying so and why, where clap alone would say "unexpected argument".

use sigil_common::cli_args::SpireOnlyFlag;

const STORE_SVID: &str = "Sigil has no SVIDStore plugins to hand such SVIDs to";

pub(super) const FLAGS: &[SpireOnlyFlag] = &[
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
