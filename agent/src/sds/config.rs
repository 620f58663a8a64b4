//! The agent config's `sds` block, SPIRE's keys and defaults.

use sigil_common::hcl::{Block, ConfigError};

/// How SDS names its resources (SPIRE's `sds` block).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdsConfig {
    /// `default_svid_name`: the resource holding the caller's default X509-SVID.
    pub default_svid_name: String,
    /// `default_bundle_name`: the resource holding our own trust domain's bundle.
    pub default_bundle_name: String,
    /// `default_all_bundles_name`: the resource holding every bundle the caller may use.
    pub default_all_bundles_name: String,
    /// `disable_spiffe_cert_validation`: bundles go to Envoy as plain CA certificates rather
    /// than as configuration of Envoy's SPIFFE certificate validator. An Envoy overrides it
    /// with the node metadata key of the same name.
    pub disable_spiffe_cert_validation: bool,
}

impl Default for SdsConfig {
    fn default() -> Self {
        Self {
            default_svid_name: "default".to_owned(),
            default_bundle_name: "ROOTCA".to_owned(),
            default_all_bundles_name: "ALL".to_owned(),
            disable_spiffe_cert_validation: false,
        }
    }
}

impl SdsConfig {
    /// Reads the `sds` block (absent: SPIRE's defaults). The three names must differ: a name
    /// given twice would make a request ambiguous.
    pub fn from_block(block: Option<Block<'_>>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let Some(mut block) = block else {
            return Ok(defaults);
        };
        let mut name = |key: &str, default: String| -> Result<String, ConfigError> {
            match block.string(key)? {
                Some(name) if name.is_empty() => Err(block.error(key, "must not be empty")),
                Some(name) => Ok(name),
                None => Ok(default),
            }
        };
        let default_svid_name = name("default_svid_name", defaults.default_svid_name)?;
        let default_bundle_name = name("default_bundle_name", defaults.default_bundle_name)?;
        let default_all_bundles_name = name(
            "default_all_bundles_name",
            defaults.default_all_bundles_name,
        )?;
        let disable_spiffe_cert_validation = block
            .bool("disable_spiffe_cert_validation")?
            .unwrap_or(false);
        let distinct = default_svid_name != default_bundle_name
            && default_svid_name != default_all_bundles_name
            && default_bundle_name != default_all_bundles_name;
        if !distinct {
            return Err(block.error(
                "default_svid_name",
                "default_svid_name, default_bundle_name and default_all_bundles_name must differ",
            ));
        }
        block.finish()?;
        Ok(Self {
            default_svid_name,
            default_bundle_name,
            default_all_bundles_name,
            disable_spiffe_cert_validation,
        })
    }
}

#[cfg(test)]
mod tests {
    use sigil_common::hcl::Document;

    use super::*;

    fn read(text: &str) -> Result<SdsConfig, ConfigError> {
        let doc = Document::parse("agent.conf", text).unwrap();
        let mut root = doc.root();
        SdsConfig::from_block(root.block("sds")?)
    }

    #[test]
    fn spire_defaults_and_keys() {
        assert_eq!(read("").unwrap(), SdsConfig::default());
        let cfg = read(
            r#"sds {
                default_svid_name = "svid"
                default_bundle_name = "bundle"
                default_all_bundles_name = "everything"
                disable_spiffe_cert_validation = true
            }"#,
        )
        .unwrap();
        assert_eq!(cfg.default_svid_name, "svid");
        assert_eq!(cfg.default_bundle_name, "bundle");
        assert_eq!(cfg.default_all_bundles_name, "everything");
        assert!(cfg.disable_spiffe_cert_validation);
    }

    #[test]
    fn unknown_keys_empty_and_clashing_names_are_refused() {
        let err = read("sds {\n  default_svid = \"x\"\n}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_svid"), "{err}");
        let err = read("sds {\n  default_bundle_name = \"\"\n}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must not be empty"), "{err}");
        let err = read("sds {\n  default_bundle_name = \"default\"\n}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must differ"), "{err}");
    }
}
