//! spiffe-helper's HCL file, read into one validated [`HelperConfig`] before anything starts.
//!
//! Every key spiffe-helper documents is read; a key it does not know, or one Sigil does not
//! implement, is refused with its file, line and name, never accepted and ignored. The rules
//! are spiffe-helper's (`cmd/spiffe-helper/config`): the X.509 file names all or none, at least
//! one kind of output, `renew_signal` with `pid_file_name`, no `pid_file_name` in one-shot mode,
//! modes defaulting to 0644 (certificates) and 0600 (keys and JWTs). Sigil adds checks
//! spiffe-helper leaves to the first write: `cert_dir` is required and must be a directory,
//! the signal name must be known, file names are plain names in `cert_dir`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use sigil_common::hcl::{Block, ConfigError, Document, parse_http_path};

use super::cmd_args::split_cmd_args;

/// spiffe-helper's default `agent_address`, used when neither the file nor
/// `SPIFFE_ENDPOINT_SOCKET` names one.
pub const DEFAULT_AGENT_ADDRESS: &str = "/tmp/spire-agent/public/api.sock";

/// Default `cert_file_mode`.
pub const DEFAULT_CERT_FILE_MODE: u32 = 0o644;
/// Default `key_file_mode`, `jwt_bundle_file_mode` and `jwt_svid_file_mode`.
pub const DEFAULT_SECRET_FILE_MODE: u32 = 0o600;

/// The whole configuration of one helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperConfig {
    /// The Workload API socket (`agent_address`, else `SPIFFE_ENDPOINT_SOCKET`, else
    /// [`DEFAULT_AGENT_ADDRESS`]).
    pub agent_socket: PathBuf,
    /// `cert_dir`: every file goes here.
    pub cert_dir: PathBuf,
    /// The X.509 files, when `svid_file_name`, `svid_key_file_name` and
    /// `svid_bundle_file_name` are set.
    pub x509: Option<X509Files>,
    /// `jwt_svids`.
    pub jwt_svids: Vec<JwtSvidFile>,
    /// `jwt_bundle_file_name`.
    pub jwt_bundle_file: Option<String>,
    /// `hint`: which SVID to write when the workload has several (empty: the first).
    pub hint: Option<String>,
    /// `*_file_mode`.
    pub modes: FileModes,
    /// What to do after each X.509 renewal.
    pub renew: RenewAction,
    /// `daemon_mode` (or `-daemon-mode`): keep the files current, or write once and exit.
    pub daemon_mode: bool,
    /// `health_checks`, when `listener_enabled` (daemon mode only).
    pub health_checks: Option<HealthChecks>,
    /// Things that are accepted but do nothing in this mode, as spiffe-helper warns about them.
    pub warnings: Vec<String>,
}

/// spiffe-helper's `health_checks` block, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChecks {
    /// `bind_port` (default 8081), on every interface.
    pub bind_port: u16,
    /// `liveness_path` (default `/live`).
    pub liveness_path: String,
    /// `readiness_path` (default `/ready`).
    pub readiness_path: String,
}

impl HealthChecks {
    /// The block's keys; `None` unless `listener_enabled` is true.
    fn from_block(mut block: Block<'_>) -> Result<Option<Self>, ConfigError> {
        let enabled = block.bool("listener_enabled")?.unwrap_or(false);
        let bind_port = block.port("bind_port")?.filter(|p| *p != 0).unwrap_or(8081);
        let liveness_path = block
            .parsed("liveness_path", parse_http_path)?
            .unwrap_or_else(|| "/live".to_owned());
        let readiness_path = block
            .parsed("readiness_path", parse_http_path)?
            .unwrap_or_else(|| "/ready".to_owned());
        if liveness_path == readiness_path {
            return Err(block.error("readiness_path", "must differ from liveness_path"));
        }
        block.finish()?;
        Ok(enabled.then_some(Self {
            bind_port,
            liveness_path,
            readiness_path,
        }))
    }
}

/// The X.509 file names and how their contents are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Files {
    /// `svid_file_name`: the certificate chain (leaf first).
    pub svid: String,
    /// `svid_key_file_name`: the PKCS#8 private key.
    pub key: String,
    /// `svid_bundle_file_name`: the trust bundle.
    pub bundle: String,
    /// `add_intermediates_to_bundle`: intermediates go to the bundle file, the SVID file holds
    /// the leaf alone.
    pub add_intermediates_to_bundle: bool,
    /// `include_federated_domains`: federated bundles are appended to the bundle file.
    pub include_federated_domains: bool,
    /// `omit_expired`: expired certificates are left out of both files.
    pub omit_expired: bool,
}

/// One `jwt_svids` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSvidFile {
    /// `jwt_audience`.
    pub audience: String,
    /// `jwt_extra_audiences`.
    pub extra_audiences: Vec<String>,
    /// `jwt_svid_file_name`.
    pub file: String,
}

impl JwtSvidFile {
    /// Every audience of the request: the audience, then the extra ones.
    pub fn audiences(&self) -> Vec<String> {
        std::iter::once(self.audience.clone())
            .chain(self.extra_audiences.iter().cloned())
            .collect()
    }
}

/// The `*_file_mode` keys, as Unix permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileModes {
    pub cert: u32,
    pub key: u32,
    pub jwt_bundle: u32,
    pub jwt_svid: u32,
}

/// `cmd` and `cmd_args`, split as spiffe-helper splits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdLine {
    pub program: String,
    pub args: Vec<String>,
}

/// What happens after each X.509 renewal (daemon mode only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RenewAction {
    /// `cmd`: started after the first write; signalled with `signal` while it runs, started
    /// again once it has exited.
    pub cmd: Option<CmdLine>,
    /// `renew_signal`.
    pub signal: Option<Signal>,
    /// `pid_file_name`: the process whose PID this file holds is sent `signal`.
    pub pid_file: Option<PathBuf>,
}

/// What the command line adds to the file: spiffe-helper's `-daemon-mode` flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HelperFlags {
    /// `-daemon-mode=<bool>`, which overrides `daemon_mode`.
    pub daemon_mode: Option<bool>,
}

impl HelperConfig {
    /// Reads and validates the file at `path`. `env_socket` is `SPIFFE_ENDPOINT_SOCKET`, read
    /// by the caller at the binary's edge.
    pub fn load(
        path: &Path,
        flags: HelperFlags,
        env_socket: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let doc = Document::read(path, false)?;
        let config = Self::from_document(&doc, flags, env_socket)?;
        config.check_cert_dir(&doc)?;
        Ok(config)
    }

    /// Parses and validates a document without touching the file system.
    pub fn from_document(
        doc: &Document,
        flags: HelperFlags,
        env_socket: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let mut root = doc.root();

        let agent_socket = match root.string("agent_address")?.filter(|a| !a.is_empty()) {
            Some(address) => socket_path(&address).map_err(|m| root.error("agent_address", m))?,
            None => match env_socket.filter(|s| !s.is_empty()) {
                Some(env) => socket_path(env).map_err(|m| ConfigError {
                    file: "environment".to_owned(),
                    line: None,
                    key: "SPIFFE_ENDPOINT_SOCKET".to_owned(),
                    message: m,
                })?,
                None => PathBuf::from(DEFAULT_AGENT_ADDRESS),
            },
        };
        let cert_dir = root
            .optional_path("cert_dir")?
            .ok_or_else(|| root.missing("cert_dir"))?;

        let mut names = FileNames::default();
        let svid = names.take(&mut root, "svid_file_name")?;
        let key = names.take(&mut root, "svid_key_file_name")?;
        let bundle = names.take(&mut root, "svid_bundle_file_name")?;
        let add_intermediates_to_bundle =
            root.bool("add_intermediates_to_bundle")?.unwrap_or(false);
        let include_federated_domains = root.bool("include_federated_domains")?.unwrap_or(false);
        let omit_expired = root.bool("omit_expired")?.unwrap_or(false);
        let x509 = match (svid, key, bundle) {
            (Some(svid), Some(key), Some(bundle)) => Some(X509Files {
                svid,
                key,
                bundle,
                add_intermediates_to_bundle,
                include_federated_domains,
                omit_expired,
            }),
            (None, None, None) => None,
            _ => {
                return Err(root.error(
                    "svid_file_name",
                    "all or none of svid_file_name, svid_key_file_name and \
                     svid_bundle_file_name must be set",
                ));
            }
        };

        let mut jwt_svids = Vec::new();
        for mut item in root.object_list("jwt_svids")? {
            let audience = item
                .string("jwt_audience")?
                .filter(|a| !a.is_empty())
                .ok_or_else(|| item.missing("jwt_audience"))?;
            let extra_audiences = item.string_list("jwt_extra_audiences")?.unwrap_or_default();
            let file = names
                .take(&mut item, "jwt_svid_file_name")?
                .ok_or_else(|| item.missing("jwt_svid_file_name"))?;
            item.finish()?;
            jwt_svids.push(JwtSvidFile {
                audience,
                extra_audiences,
                file,
            });
        }
        let jwt_bundle_file = names.take(&mut root, "jwt_bundle_file_name")?;
        if x509.is_none() && jwt_svids.is_empty() && jwt_bundle_file.is_none() {
            return Err(root.error(
                "",
                "nothing to write: set svid_file_name, svid_key_file_name and \
                 svid_bundle_file_name, or jwt_svids, or jwt_bundle_file_name",
            ));
        }

        let hint = root.string("hint")?.filter(|h| !h.is_empty());
        let mut mode = |key: &str, default: u32| -> Result<u32, ConfigError> {
            // spiffe-helper reads 0 as "not set".
            Ok(root.file_mode(key)?.filter(|m| *m != 0).unwrap_or(default))
        };
        let modes = FileModes {
            cert: mode("cert_file_mode", DEFAULT_CERT_FILE_MODE)?,
            key: mode("key_file_mode", DEFAULT_SECRET_FILE_MODE)?,
            jwt_bundle: mode("jwt_bundle_file_mode", DEFAULT_SECRET_FILE_MODE)?,
            jwt_svid: mode("jwt_svid_file_mode", DEFAULT_SECRET_FILE_MODE)?,
        };

        let cmd_program = root.string("cmd")?.filter(|c| !c.is_empty());
        let cmd_args = root.string("cmd_args")?.unwrap_or_default();
        let cmd = match cmd_program {
            Some(program) => Some(CmdLine {
                program,
                args: split_cmd_args(&cmd_args).map_err(|m| root.error("cmd_args", m))?,
            }),
            None if !cmd_args.is_empty() => {
                return Err(root.error("cmd_args", "is set but cmd is not"));
            }
            None => None,
        };
        let signal = root.parsed("renew_signal", parse_signal)?.and_then(|s| s);
        let pid_file = root.optional_path("pid_file_name")?;
        let daemon_mode = match flags.daemon_mode {
            Some(flag) => {
                root.skip("daemon_mode");
                flag
            }
            None => root.bool("daemon_mode")?.unwrap_or(true),
        };
        let mut warnings = Vec::new();
        if !daemon_mode {
            if cmd.is_some() {
                warnings.push("cmd is set but daemon_mode is false: it is not run".to_owned());
            }
            if signal.is_some() {
                warnings.push(
                    "renew_signal is set but daemon_mode is false: no signal is sent".to_owned(),
                );
            }
            if pid_file.is_some() {
                return Err(root.error(
                    "pid_file_name",
                    "is set but daemon_mode is false: pid_file_name works only in daemon mode",
                ));
            }
        }
        if daemon_mode && x509.is_none() && (cmd.is_some() || pid_file.is_some()) {
            warnings.push(
                "cmd and pid_file_name act after X.509 updates, and no X.509 files are \
                 configured: they never act"
                    .to_owned(),
            );
        }
        if pid_file.is_some() && signal.is_none() {
            return Err(root.error("pid_file_name", "needs renew_signal"));
        }

        let health_checks = match root.block("health_checks")? {
            Some(block) => HealthChecks::from_block(block)?,
            None => None,
        };
        root.finish()?;

        Ok(Self {
            agent_socket,
            cert_dir,
            x509,
            jwt_svids,
            jwt_bundle_file,
            hint,
            modes,
            renew: RenewAction {
                cmd,
                signal,
                pid_file,
            },
            daemon_mode,
            health_checks,
            warnings,
        })
    }

    /// Every file name the helper writes in `cert_dir`.
    pub fn file_names(&self) -> Vec<&str> {
        let x509 = self
            .x509
            .iter()
            .flat_map(|x| [x.svid.as_str(), x.key.as_str(), x.bundle.as_str()]);
        x509.chain(self.jwt_bundle_file.as_deref())
            .chain(self.jwt_svids.iter().map(|j| j.file.as_str()))
            .collect()
    }

    /// `cert_dir` must exist and be a directory (spiffe-helper: "must be created previously").
    fn check_cert_dir(&self, doc: &Document) -> Result<(), ConfigError> {
        let error = |message: String| ConfigError {
            file: doc.file().to_owned(),
            line: None,
            key: "cert_dir".to_owned(),
            message,
        };
        match std::fs::metadata(&self.cert_dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(error(format!(
                "{} is not a directory",
                self.cert_dir.display()
            ))),
            Err(e) => Err(error(format!(
                "{}: {e} (the directory must exist)",
                self.cert_dir.display()
            ))),
        }
    }
}

/// The file names given so far: each is a plain name in `cert_dir`, and no two are the same.
#[derive(Default)]
struct FileNames(BTreeSet<String>);

impl FileNames {
    fn take(&mut self, block: &mut Block<'_>, key: &str) -> Result<Option<String>, ConfigError> {
        let Some(name) = block.string(key)?.filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        if name.contains('/') || name == "." || name.starts_with("..") {
            return Err(block.error(
                key,
                format!(
                    "{name:?} must be a file name in cert_dir (no '/'; names starting with \
                     \"..\" are the helper's own)"
                ),
            ));
        }
        if !self.0.insert(name.clone()) {
            return Err(block.error(key, format!("{name:?} is already used by another file")));
        }
        Ok(Some(name))
    }
}

/// `agent_address`: a socket path, or a `unix:` URI as in `SPIFFE_ENDPOINT_SOCKET`.
fn socket_path(address: &str) -> Result<PathBuf, String> {
    let path = address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))
        .unwrap_or(address);
    if path.is_empty() || address.contains("://") && !address.starts_with("unix://") {
        return Err(format!(
            "{address:?} is not a Unix socket path or unix:// address"
        ));
    }
    Ok(PathBuf::from(path))
}

/// `renew_signal`: a name as spiffe-helper takes it (`"SIGUSR1"`, `"SIGHUP"`); empty is unset.
fn parse_signal(name: &str) -> Result<Option<Signal>, String> {
    if name.is_empty() {
        return Ok(None);
    }
    name.parse::<Signal>()
        .map(Some)
        .map_err(|_| format!("{name:?} is not a signal name such as \"SIGUSR1\" or \"SIGHUP\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HelperConfig, String> {
        let doc = Document::parse("helper.conf", text).map_err(|e| e.to_string())?;
        HelperConfig::from_document(&doc, HelperFlags::default(), None).map_err(|e| e.to_string())
    }

    /// A file in spiffe-helper's shape (HCL 1 spellings: a one-line list of objects, octal
    /// modes), using every key its README documents for X.509, JWT and renewal.
    const SPIFFE_HELPER_STYLE: &str = r#"
agent_address = "/tmp/spire-agent/public/api.sock"
cmd = "stunnel"
cmd_args = "-fd 0 --accept 8443 --cert certs/tls.pem --key certs/tls_key.pem --CAfile certs/ca.pem --name \"front door\""
cert_dir = "certs"
renew_signal = "SIGUSR1"
svid_file_name = "tls.pem"
svid_key_file_name = "tls_key.pem"
svid_bundle_file_name = "ca.pem"
jwt_svids = [{jwt_audience="billing",jwt_extra_audiences=["ledger", "audit"], jwt_svid_file_name="billing.jwt"}]
jwt_bundle_file_name = "jwks.json"
cert_file_mode = 0440
key_file_mode = 0400
jwt_bundle_file_mode = 0444
jwt_svid_file_mode = 0400
"#;

    #[test]
    fn reads_a_file_in_spiffe_helpers_shape() {
        let c = parse(SPIFFE_HELPER_STYLE).unwrap();
        assert_eq!(c.agent_socket, PathBuf::from(DEFAULT_AGENT_ADDRESS));
        assert_eq!(c.cert_dir, PathBuf::from("certs"));
        let x509 = c.x509.unwrap();
        assert_eq!(
            (x509.svid.as_str(), x509.key.as_str(), x509.bundle.as_str()),
            ("tls.pem", "tls_key.pem", "ca.pem")
        );
        assert_eq!(
            c.jwt_svids,
            [JwtSvidFile {
                audience: "billing".to_owned(),
                extra_audiences: vec!["ledger".to_owned(), "audit".to_owned()],
                file: "billing.jwt".to_owned(),
            }]
        );
        assert_eq!(c.jwt_svids[0].audiences(), ["billing", "ledger", "audit"]);
        assert_eq!(c.jwt_bundle_file.as_deref(), Some("jwks.json"));
        assert_eq!(
            c.modes,
            FileModes {
                cert: 0o440,
                key: 0o400,
                jwt_bundle: 0o444,
                jwt_svid: 0o400
            }
        );
        let cmd = c.renew.cmd.unwrap();
        assert_eq!(cmd.program, "stunnel");
        assert_eq!(cmd.args.len(), 12);
        assert_eq!(cmd.args.last().map(String::as_str), Some("front door"));
        assert_eq!(c.renew.signal, Some(Signal::SIGUSR1));
        assert!(c.daemon_mode);
    }

    #[test]
    fn defaults_and_the_environment() {
        let text = "cert_dir = \"d\"\njwt_bundle_file_name = \"b.json\"\n";
        let c = parse(text).unwrap();
        assert_eq!(
            c.modes,
            FileModes {
                cert: 0o644,
                key: 0o600,
                jwt_bundle: 0o600,
                jwt_svid: 0o600
            }
        );
        assert!(c.daemon_mode && c.x509.is_none() && c.renew == RenewAction::default());
        let doc = Document::parse("helper.conf", text).unwrap();
        let env = HelperConfig::from_document(
            &doc,
            HelperFlags {
                daemon_mode: Some(false),
            },
            Some("unix:///run/agent.sock"),
        )
        .unwrap();
        assert_eq!(env.agent_socket, PathBuf::from("/run/agent.sock"));
        assert!(!env.daemon_mode);
        let file_wins = parse(
            "agent_address = \"unix:///a.sock\"\ncert_dir = \"d\"\njwt_bundle_file_name = \"b\"\n",
        )
        .unwrap();
        assert_eq!(file_wins.agent_socket, PathBuf::from("/a.sock"));
    }

    #[test]
    fn refusals_name_the_key_and_line() {
        let base = "cert_dir = \"d\"\njwt_bundle_file_name = \"b.json\"\n";
        let cases = [
            (
                "renew_sign = \"SIGUSR1\"",
                "helper.conf:3: renew_sign: unknown key",
            ),
            (
                "renew_signal = \"SIGFOO\"",
                "helper.conf:3: renew_signal: \"SIGFOO\" is not a signal name",
            ),
            (
                "pid_file_name = \"/run/x.pid\"",
                "helper.conf: pid_file_name: needs renew_signal",
            ),
            (
                "svid_file_name = \"s.pem\"",
                "helper.conf: svid_file_name: all or none of",
            ),
            (
                "jwt_svids = [{jwt_audience = \"a\"}]",
                "helper.conf:3: jwt_svids[0].jwt_svid_file_name: is required",
            ),
            (
                "jwt_svids = [{jwt_svid_file_name = \"t\", jwt_audience = \"a\", x = 1}]",
                "helper.conf:3: jwt_svids[0].x: unknown key",
            ),
            (
                "jwt_svids = [{jwt_svid_file_name = \"b.json\", jwt_audience = \"a\"}]",
                "already used by another file",
            ),
            (
                "key_file_mode = 0999",
                "helper.conf:3: key_file_mode: 0999 is not a file mode",
            ),
            (
                "health_checks {\n  liveness_path = \"/h\"\n  readiness_path = \"/h\"\n}",
                "helper.conf:3: health_checks.readiness_path: must differ from liveness_path",
            ),
            (
                "health_checks {\n  bind_prt = 1\n}",
                "health_checks.bind_prt: unknown key",
            ),
            ("cmd_args = \"-x\"", "cmd_args: is set but cmd is not"),
            ("exit_when_ready = true", "exit_when_ready: unknown key"),
            (
                "daemon_mode = false\npid_file_name = \"p\"\nrenew_signal = \"SIGHUP\"",
                "works only in daemon mode",
            ),
        ];
        for (extra, want) in cases {
            let err = parse(&format!("{base}{extra}\n")).unwrap_err();
            assert!(err.contains(want), "{extra}: {err}");
        }
        assert!(
            parse("jwt_bundle_file_name = \"b\"\n")
                .unwrap_err()
                .contains("cert_dir: is required")
        );
        assert!(
            parse("cert_dir = \"d\"\n")
                .unwrap_err()
                .contains("nothing to write")
        );
        assert!(
            parse("cert_dir = \"d\"\njwt_bundle_file_name = \"../b\"\n")
                .unwrap_err()
                .contains("must be a file name in cert_dir")
        );
    }

    #[test]
    fn one_shot_mode_warns_about_cmd_and_signal() {
        let c = parse(
            "cert_dir = \"d\"\njwt_bundle_file_name = \"b\"\ndaemon_mode = false\ncmd = \"x\"\nrenew_signal = \"SIGHUP\"\nhealth_checks {\n  listener_enabled = false\n  bind_port = 8081\n}\n",
        )
        .unwrap();
        assert!(!c.daemon_mode);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert_eq!(c.health_checks, None);
        let c = parse(
            "cert_dir = \"d\"\njwt_bundle_file_name = \"b\"\nhealth_checks {\n  listener_enabled = true\n}\n",
        )
        .unwrap();
        assert_eq!(
            c.health_checks,
            Some(HealthChecks {
                bind_port: 8081,
                liveness_path: "/live".to_owned(),
                readiness_path: "/ready".to_owned()
            })
        );
    }
}
