//! The plugin table both config files share, read the way SPIRE's catalog reads it:
//!
//! ```hcl
//! plugins {
//!     KeyManager "disk" {
//!         enabled = true            # optional; `false` skips the plugin, settings and all
//!         plugin_data { keys_path = "/var/lib/sigil/keys.json" }
//!     }
//! }
//! ```
//!
//! A binary says, for each kind, which plugin names it has, how each is built from its block
//! (the owner of the plugin parses its own `plugin_data`) and how many may be configured. The
//! table refuses unknown names, repeats and, through [`Block::finish`], any `plugin_data` key
//! the owner did not read. A plugin SPIRE has and Sigil lacks is "not supported by Sigil" (the
//! binary lists SPIRE's names: [`PluginTable::spire_plugins`]), as are SPIRE's external
//! plugins (`plugin_cmd`, `plugin_checksum`) and `plugin_data_file`.

use super::{Block, ConfigError, SpireOnly};

/// SPIRE's keys of a plugin's block that Sigil does not implement.
const PLUGIN_KEYS: &[(&str, SpireOnly)] = &[
    (
        "plugin_cmd",
        SpireOnly::Refused(
            "external plugins are not loaded; Sigil has only its built-in plugins (remove plugin_cmd to use a built-in one of that name)",
        ),
    ),
    (
        "plugin_checksum",
        SpireOnly::Refused("external plugins (plugin_cmd) are not loaded"),
    ),
    (
        "plugin_data_file",
        SpireOnly::Refused("write the plugin's settings inline, as plugin_data { ... }"),
    ),
];

/// SPIRE's built-in plugins of one binary: each kind with its plugins' names.
pub type SpirePlugins = &'static [(&'static str, &'static [&'static str])];

/// SPIRE's built-in `NodeAttestor` plugins (1.9 to 1.15), the same names on the server and the
/// agent (each agent plugin pairs with the server's).
pub const SPIRE_NODE_ATTESTORS: &[&str] = &[
    "aws_iid",
    "azure_imds",
    "azure_msi",
    "gcp_iit",
    "http_challenge",
    "join_token",
    "k8s_psat",
    "k8s_sat",
    "sshpop",
    "tpm_devid",
    "x509pop",
];

/// One plugin a binary has: its name and how its owner builds it from the plugin's block.
pub type Builder<'b, T> = (
    &'static str,
    &'b dyn Fn(&mut Plugin<'_>) -> Result<T, ConfigError>,
);

/// The `plugins` block, read one kind at a time.
#[derive(Debug)]
pub struct PluginTable<'a> {
    block: Block<'a>,
    spire: SpirePlugins,
}

/// One enabled plugin block, handed to its [`Builder`].
#[derive(Debug)]
pub struct Plugin<'a> {
    block: Block<'a>,
    data: Option<Block<'a>>,
}

impl<'a> Plugin<'a> {
    /// `plugin_data`, when given. Keys the owner leaves unread are errors.
    pub fn data(&mut self) -> Option<Block<'a>> {
        self.data.take()
    }

    /// `plugin_data`, for a plugin that cannot work without settings.
    pub fn required_data(&mut self) -> Result<Block<'a>, ConfigError> {
        self.data
            .take()
            .ok_or_else(|| self.block.missing("plugin_data"))
    }
}

impl<'a> PluginTable<'a> {
    /// The `plugins` block of the file, which every config needs.
    pub fn from_root(root: &mut Block<'a>) -> Result<Self, ConfigError> {
        let block = root
            .block("plugins")?
            .ok_or_else(|| root.missing("plugins"))?;
        Ok(Self { block, spire: &[] })
    }

    /// SPIRE's plugins of this binary, by kind: one that Sigil lacks is refused as "not
    /// supported by Sigil" rather than as an unknown name.
    #[must_use]
    pub fn spire_plugins(mut self, spire: SpirePlugins) -> Self {
        self.spire = spire;
        self
    }

    /// Applies the binary's table of SPIRE's plugin kinds that Sigil lacks altogether (see
    /// [`Block::spire_only`]); call it before [`PluginTable::finish`].
    pub fn spire_only(&mut self, kinds: &[(&str, SpireOnly)]) -> Result<(), ConfigError> {
        self.block.spire_only(kinds)
    }

    /// Exactly one enabled plugin of `kind` (`DataStore`, `KeyManager`).
    pub fn exactly_one<T>(
        &mut self,
        kind: &str,
        builders: &[Builder<'_, T>],
    ) -> Result<T, ConfigError> {
        self.at_most_one(kind, builders)?
            .ok_or_else(|| self.block.error(kind, "exactly one is required"))
    }

    /// At most one enabled plugin of `kind` (`UpstreamAuthority`).
    pub fn at_most_one<T>(
        &mut self,
        kind: &str,
        builders: &[Builder<'_, T>],
    ) -> Result<Option<T>, ConfigError> {
        let mut plugins = self.read(kind, builders, |_, seen| {
            (!seen.is_empty()).then(|| format!("only one {kind} may be configured"))
        })?;
        Ok(plugins.pop().map(|(_, built)| built))
    }

    /// Any number of enabled plugins of `kind`, each name at most once (`NodeAttestor` on the
    /// server, `WorkloadAttestor`, `Notifier`), in file order.
    pub fn each_once<T>(
        &mut self,
        kind: &str,
        builders: &[Builder<'_, T>],
    ) -> Result<Vec<T>, ConfigError> {
        let plugins = self.read(kind, builders, |name, seen| {
            seen.iter()
                .any(|(seen, _)| *seen == name)
                .then(|| "is configured more than once".to_owned())
        })?;
        Ok(plugins.into_iter().map(|(_, built)| built).collect())
    }

    /// An error about `kind` as a whole (e.g. "at least one is required"), on the `plugins`
    /// block's line.
    pub fn error(&self, kind: &str, message: impl Into<String>) -> ConfigError {
        self.block.error(kind, message)
    }

    /// Ends reading: a kind no binary asked for is an "unknown block".
    pub fn finish(self) -> Result<(), ConfigError> {
        self.block.finish()
    }

    /// Every plugin of `kind` in file order: an unknown name is an error, a disabled plugin is
    /// skipped, each enabled one is built, then `repeated` (given the name and the plugins
    /// built so far) may refuse it.
    fn read<T>(
        &mut self,
        kind: &str,
        builders: &[Builder<'_, T>],
        repeated: impl Fn(&str, &[(&str, T)]) -> Option<String>,
    ) -> Result<Vec<(&'static str, T)>, ConfigError> {
        let mut built = Vec::new();
        for (name, mut block) in self.block.labelled_blocks(kind)? {
            let Some(&(known, build)) = builders.iter().find(|(n, _)| *n == name) else {
                let supported: Vec<String> =
                    builders.iter().map(|(n, _)| format!("{n:?}")).collect();
                let supported = supported.join(", ");
                let spire_has = self
                    .spire
                    .iter()
                    .any(|(k, names)| *k == kind && names.contains(&name.as_str()));
                let message = if spire_has {
                    format!(
                        "SPIRE's {kind} plugin {name:?} is not supported by Sigil (Sigil's {kind} plugins: {supported})"
                    )
                } else {
                    format!("unknown {kind} plugin {name:?} (supported: {supported})")
                };
                return Err(block.error("", message));
            };
            if block.bool("enabled")? == Some(false) {
                block.skip("plugin_data");
                continue;
            }
            block.spire_only(PLUGIN_KEYS)?;
            let data = block.block("plugin_data")?;
            let mut plugin = Plugin { block, data };
            let value = build(&mut plugin)?;
            let Plugin { block, data } = plugin;
            // A plugin without settings takes no `plugin_data` keys; an owner that read some
            // has finished its block, so what is left here was never read.
            data.map_or(Ok(()), Block::finish)?;
            if let Some(message) = repeated(known, &built) {
                return Err(block.error("", message));
            }
            block.finish()?;
            built.push((known, value));
        }
        Ok(built)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hcl::Document;

    #[derive(Debug, PartialEq, Eq)]
    enum Km {
        Memory,
        Disk(Option<String>),
    }

    fn memory(_: &mut Plugin<'_>) -> Result<Km, ConfigError> {
        Ok(Km::Memory)
    }

    fn disk(p: &mut Plugin<'_>) -> Result<Km, ConfigError> {
        let Some(mut data) = p.data() else {
            return Ok(Km::Disk(None));
        };
        let path = data.string("keys_path")?;
        data.finish()?;
        Ok(Km::Disk(path))
    }

    const KEY_MANAGERS: &[Builder<'static, Km>] = &[("memory", &memory), ("disk", &disk)];

    fn key_manager(text: &str) -> Result<Km, String> {
        let doc = Document::parse("test.conf", text).map_err(|e| e.to_string())?;
        let mut root = doc.root();
        let read = |root: &mut Block<'_>| {
            let mut table = PluginTable::from_root(root)?;
            let km = table.exactly_one("KeyManager", KEY_MANAGERS)?;
            table.finish()?;
            Ok(km)
        };
        read(&mut root).map_err(|e: ConfigError| e.to_string())
    }

    #[test]
    fn exactly_one_plugin_is_built_by_its_owner() {
        assert_eq!(
            key_manager("plugins {\n  KeyManager \"memory\" {}\n}\n"),
            Ok(Km::Memory)
        );
        assert_eq!(
            key_manager(
                "plugins {\n  KeyManager \"disk\" {\n    plugin_data {\n      keys_path = \"/k\"\n    }\n  }\n}\n"
            ),
            Ok(Km::Disk(Some("/k".to_owned())))
        );
        // A disabled plugin is skipped, settings and all.
        assert_eq!(
            key_manager(
                "plugins {\n  KeyManager \"disk\" {\n    enabled = false\n    plugin_data {\n      x = 1\n    }\n  }\n  KeyManager \"memory\" {}\n}\n"
            ),
            Ok(Km::Memory)
        );
    }

    #[test]
    fn table_errors_name_the_plugin_and_its_line() {
        let cases = [
            ("", "test.conf: plugins: is required"),
            (
                "plugins {\n}\n",
                "test.conf:1: plugins.KeyManager: exactly one is required",
            ),
            (
                "plugins {\n  KeyManager \"vault\" {}\n}\n",
                r#"test.conf:2: plugins.KeyManager.vault: unknown KeyManager plugin "vault" (supported: "memory", "disk")"#,
            ),
            (
                "plugins {\n  KeyManager \"memory\" {}\n  KeyManager \"disk\" {}\n}\n",
                "test.conf:3: plugins.KeyManager.disk: only one KeyManager may be configured",
            ),
            (
                "plugins {\n  KeyManager \"memory\" {\n    plugin_data {\n      x = 1\n    }\n  }\n}\n",
                "test.conf:4: plugins.KeyManager.memory.plugin_data.x: unknown key",
            ),
            (
                "plugins {\n  KeyManager \"memory\" {\n    plugin_cmd = \"/bin/km\"\n  }\n}\n",
                "test.conf:3: plugins.KeyManager.memory.plugin_cmd: not supported by Sigil: external plugins are not loaded; Sigil has only its built-in plugins (remove plugin_cmd to use a built-in one of that name)",
            ),
            (
                "plugins {\n  KeyManager \"memory\" {}\n  Vault \"x\" {}\n}\n",
                "test.conf:3: plugins.Vault: unknown block",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(key_manager(text), Err(want.to_owned()), "{text}");
        }
    }

    #[test]
    fn each_once_allows_several_kinds_but_no_repeat() {
        let read = |text: &str| {
            let doc = Document::parse("test.conf", text).unwrap();
            let mut root = doc.root();
            let mut table = PluginTable::from_root(&mut root).unwrap();
            let needs_data = |p: &mut Plugin<'_>| {
                let mut data = p.required_data()?;
                let n = data.u64("n")?;
                data.finish()?;
                Ok(n)
            };
            let attestors: &[Builder<'_, Option<u64>>] =
                &[("a", &|_| Ok(None)), ("b", &needs_data)];
            table
                .each_once("NodeAttestor", attestors)
                .map_err(|e| e.to_string())
        };
        assert_eq!(read("plugins {\n}\n"), Ok(vec![]));
        assert_eq!(
            read(
                "plugins {\n  NodeAttestor \"b\" {\n    plugin_data {\n      n = 2\n    }\n  }\n  NodeAttestor \"a\" {}\n}\n"
            ),
            Ok(vec![Some(2), None])
        );
        assert_eq!(
            read("plugins {\n  NodeAttestor \"a\" {}\n  NodeAttestor \"a\" {}\n}\n"),
            Err("test.conf:3: plugins.NodeAttestor.a: is configured more than once".to_owned())
        );
        assert_eq!(
            read("plugins {\n  NodeAttestor \"b\" {}\n}\n"),
            Err("test.conf:2: plugins.NodeAttestor.b.plugin_data: is required".to_owned())
        );
    }
}
