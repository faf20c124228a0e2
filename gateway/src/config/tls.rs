//! TLS and credentials of an MQTT connection, shared by `[upstream]` and
//! MQTT sources: the `tls` table (`ca_file`, `cert_file`, `key_file`,
//! `server_name`) and `username` with `password_file` (or an inline
//! `password`). Validation reads the files: each must exist and parse, the
//! key must match the certificate, and a password file must not be
//! readable by group or others. `check` prints file names, never a
//! password.

use std::fmt::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::diag::Cx;
use super::raw::RawTls;
use crate::mqtt::tls::{self, TlsSetting};

/// The validated `tls` table of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM CA bundle; `None`: the operating system's trusted CAs.
    pub ca_file: Option<PathBuf>,
    pub client_auth: Option<ClientAuth>,
    /// The name checked against the broker's certificate instead of the
    /// broker address's host (brokers reached by IP or through a tunnel).
    pub server_name: Option<String>,
    /// The client certificate's notAfter (seconds since the Unix epoch),
    /// read at load, for the expiry warning.
    pub client_cert_not_after: Option<i64>,
    /// SHA-256 of the files' contents at load: a reload after the files
    /// were replaced (same names) compares unequal, so the connection is
    /// made again with the new files.
    pub files_digest: String,
}

/// The gateway's own certificate, for brokers that require one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM certificate chain, the gateway's certificate first.
    pub cert_file: PathBuf,
    /// PEM private key: PKCS#8, RSA (PKCS#1) or EC (SEC1).
    pub key_file: PathBuf,
}

/// A user name and its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Password,
    /// Where the password was read from; `None`: written in the config.
    pub password_file: Option<PathBuf>,
}

/// A password: compared, handed to the MQTT client, never printed (its
/// `Debug` says `"..."`).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Password(String);

impl Password {
    /// The password itself, for the MQTT client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Password {
    fn from(s: &str) -> Self {
        Password(s.to_owned())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"...\"")
    }
}

impl TlsConfig {
    /// The table's settings as `check` prints them, on one line.
    pub(super) fn render(&self, table: &str, s: &mut String) {
        let mut items = Vec::new();
        if let Some(p) = &self.ca_file {
            items.push(format!("ca_file = {:?}", p.display().to_string()));
        }
        if let Some(a) = &self.client_auth {
            items.push(format!(
                "cert_file = {:?}",
                a.cert_file.display().to_string()
            ));
            items.push(format!("key_file = {:?}", a.key_file.display().to_string()));
        }
        if let Some(n) = &self.server_name {
            items.push(format!("server_name = {n:?}"));
        }
        if items.is_empty() {
            let _ = writeln!(s, "{table} = {{}}");
        } else {
            let _ = writeln!(s, "{table} = {{ {} }}", items.join(", "));
        }
    }
}

impl Credentials {
    /// `username` and where the password comes from, as `check` prints them.
    pub(super) fn render(&self, s: &mut String) {
        let _ = writeln!(s, "username = {:?}", self.username);
        match &self.password_file {
            Some(p) => {
                let _ = writeln!(s, "password_file = {:?}", p.display().to_string());
            }
            None => {
                let _ = writeln!(s, "password = \"...\"");
            }
        }
    }
}

/// What `check` prints for optional credentials and TLS of a connection.
pub(super) fn render_security(
    credentials: Option<&Credentials>,
    tls: Option<&TlsConfig>,
    s: &mut String,
) {
    if let Some(c) = credentials {
        c.render(s);
    }
    if let Some(t) = tls {
        t.render("tls", s);
    }
}

/// The prefix of a `password_file` that stands for systemd's credentials
/// directory (`LoadCredential=`).
const CREDENTIALS_DIRECTORY: &str = "${CREDENTIALS_DIRECTORY}";

impl Cx<'_> {
    /// Validates a `tls` table; `table` names it in messages
    /// (`[upstream.tls]`, "the source's `tls`"). With `defer_files`, a file
    /// that cannot be used now (unreadable, malformed, a key of another
    /// certificate) is [`Cx::defer`]red instead of failing the table.
    pub(super) fn tls(
        &mut self,
        t: &Spanned<RawTls>,
        table: &str,
        defer_files: bool,
    ) -> Option<TlsConfig> {
        let raw = t.get_ref();
        let path = |v: &Option<Spanned<String>>| v.as_ref().map(|p| PathBuf::from(p.get_ref()));
        let client_auth = match (&raw.cert_file, &raw.key_file) {
            (Some(c), Some(k)) => Some(ClientAuth {
                cert_file: PathBuf::from(c.get_ref()),
                key_file: PathBuf::from(k.get_ref()),
            }),
            (None, None) => None,
            (Some(c), None) | (None, Some(c)) => {
                let (set, missing) = if raw.cert_file.is_some() {
                    ("cert_file", "key_file")
                } else {
                    ("key_file", "cert_file")
                };
                self.at(
                    c.span(),
                    format!("{table}: `{set}` is set without `{missing}`"),
                    Some(
                        "set both (the gateway's certificate and its private key) or neither"
                            .into(),
                    ),
                );
                return None;
            }
        };
        let mut cfg = TlsConfig {
            ca_file: path(&raw.ca_file),
            client_auth,
            server_name: raw.server_name.as_ref().map(|n| n.get_ref().clone()),
            client_cert_not_after: None,
            files_digest: String::new(),
        };
        let span_of = |setting: TlsSetting| {
            let v = match setting {
                TlsSetting::CaFile => &raw.ca_file,
                TlsSetting::CertFile => &raw.cert_file,
                TlsSetting::KeyFile => &raw.key_file,
                TlsSetting::ServerName => &raw.server_name,
            };
            v.as_ref().map_or(t.span(), |v| v.span())
        };
        // A device or a FIFO (such as /dev/zero) would be read forever.
        let named = [
            (TlsSetting::CaFile, cfg.ca_file.clone()),
            (
                TlsSetting::CertFile,
                cfg.client_auth.as_ref().map(|a| a.cert_file.clone()),
            ),
            (
                TlsSetting::KeyFile,
                cfg.client_auth.as_ref().map(|a| a.key_file.clone()),
            ),
        ];
        for (setting, path) in named {
            let Some(path) = path else { continue };
            match std::fs::metadata(&path) {
                Ok(m) if !m.is_file() => {
                    self.at(
                        span_of(setting),
                        format!("{table}: {} is not a regular file", path.display()),
                        Some("name the PEM file itself".into()),
                    );
                    return None;
                }
                _ => {}
            }
        }
        if let Err(e) = tls::rustls_config(&cfg) {
            if !defer_files {
                self.at(
                    span_of(e.setting),
                    format!("{table}: {}", e.message),
                    Some(e.hint),
                );
                return None;
            }
            self.defer(
                span_of(e.setting),
                format!("{table}: {}", e.message),
                e.hint,
            );
            cfg.files_digest = files_digest(&cfg);
            return Some(cfg);
        }
        if let Some(auth) = &cfg.client_auth {
            let not_after = tls::client_chain(&auth.cert_file)
                .map_err(|e| e.message)
                .and_then(|chain| tls::not_after(&chain[0]));
            match not_after {
                Ok(t) => cfg.client_cert_not_after = Some(t),
                Err(e) => {
                    self.at(
                        span_of(TlsSetting::CertFile),
                        format!(
                            "{table}: cannot read the expiry date of {}: {e}",
                            auth.cert_file.display()
                        ),
                        Some("point cert_file at a PEM X.509 certificate".into()),
                    );
                    return None;
                }
            }
        }
        cfg.files_digest = files_digest(&cfg);
        Some(cfg)
    }

    /// Validates `username` with `password_file` or `password`; `None`
    /// without a user name (reported when a password is set alone).
    pub(super) fn credentials(
        &mut self,
        username: Option<Spanned<String>>,
        password: Option<Spanned<String>>,
        password_file: Option<Spanned<String>>,
    ) -> Option<Credentials> {
        let Some(username) = username else {
            if let Some(p) = password_file.as_ref().or(password.as_ref()) {
                self.at(
                    p.span(),
                    "a password is set without `username`",
                    Some("add `username`, or remove the password".into()),
                );
            }
            return None;
        };
        match (password, password_file) {
            (Some(p), Some(_)) => {
                self.at(
                    p.span(),
                    "both `password` and `password_file` are set",
                    Some("keep `password_file` and remove `password`".into()),
                );
                None
            }
            (Some(p), None) => {
                self.warn(
                    p.span(),
                    "the password is written in the configuration, where anyone who can read the file sees it",
                    "move it to a file readable by the gateway alone and set `password_file` to it",
                );
                Some(Credentials {
                    username: username.into_inner(),
                    password: Password(p.into_inner()),
                    password_file: None,
                })
            }
            (None, Some(f)) => {
                let span = f.span();
                let path = self.credentials_path(f.get_ref(), span.clone())?;
                let password = self.read_password(&path, span)?;
                Some(Credentials {
                    username: username.into_inner(),
                    password: Password(password),
                    password_file: Some(path),
                })
            }
            (None, None) => Some(Credentials {
                username: username.into_inner(),
                password: Password::default(),
                password_file: None,
            }),
        }
    }

    /// `text` as a path, with a leading `${CREDENTIALS_DIRECTORY}` replaced
    /// by the directory systemd gives the service.
    fn credentials_path(&mut self, text: &str, span: Range<usize>) -> Option<PathBuf> {
        let Some(rest) = text.strip_prefix(CREDENTIALS_DIRECTORY) else {
            return Some(PathBuf::from(text));
        };
        match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Some(Path::new(&dir).join(rest.trim_start_matches('/'))),
            None => {
                self.at(
                    span,
                    format!("`password_file` starts with {CREDENTIALS_DIRECTORY}, but CREDENTIALS_DIRECTORY is not set"),
                    Some("run the gateway (and `check`) from its systemd unit with `LoadCredential=`, or name the file by its path".into()),
                );
                None
            }
        }
    }

    /// The password in `path`, its trailing line end removed; the file must
    /// be readable by its owner alone.
    fn read_password(&mut self, path: &Path, span: Range<usize>) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                self.at(
                    span,
                    format!("cannot read the password file {}: {e}", path.display()),
                    Some("create it with the password on one line, owned by the gateway's user with mode 0600".into()),
                );
                return None;
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            self.at(
                span,
                format!(
                    "the password file {} has mode {mode:04o}: group or others can read it",
                    path.display()
                ),
                Some(format!(
                    "`chmod 600 {}` (owned by the user the gateway runs as); under the packaged service, load it with systemd's LoadCredential= (see the TLS and credentials section of docs/operations.md)",
                    path.display()
                )),
            );
            return None;
        }
        match std::fs::read_to_string(path) {
            Ok(text) => Some(strip_line_end(&text).to_owned()),
            Err(e) => {
                self.at(
                    span,
                    format!("cannot read the password file {}: {e}", path.display()),
                    Some(
                        "make it readable by the gateway's user (and by nobody else: mode 0600)"
                            .into(),
                    ),
                );
                None
            }
        }
    }
}

/// `text` without one trailing `\n` or `\r\n`.
fn strip_line_end(text: &str) -> &str {
    text.strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(text)
}

/// SHA-256 over the contents of the files `cfg` names, in hex.
fn files_digest(cfg: &TlsConfig) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let files = [
        cfg.ca_file.as_deref(),
        cfg.client_auth.as_ref().map(|a| a.cert_file.as_path()),
        cfg.client_auth.as_ref().map(|a| a.key_file.as_path()),
    ];
    for f in files.into_iter().flatten() {
        h.update(std::fs::read(f).unwrap_or_default());
        h.update([0]);
    }
    h.finalize().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_never_in_debug_output() {
        let c = Credentials {
            username: "gw".into(),
            password: Password("hunter2".into()),
            password_file: None,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let mut s = String::new();
        c.render(&mut s);
        assert!(!s.contains("hunter2"), "{s}");
    }

    /// Validates `text` (a minimal config followed by `upstream`'s extra
    /// lines): the config, or each mistake as `line: message`.
    fn parse_upstream(extra: &str) -> Result<crate::config::Config, Vec<String>> {
        let text = format!(
            "[gateway]\nid = \"gw\"\n\n[[source]]\nkind = \"mqtt\"\nbroker = \"127.0.0.1:1883\"\ntopic_template = \"p/{{sensor}}\"\n\n[upstream]\nbroker = \"127.0.0.1:8883\"\n{extra}"
        );
        crate::config::Config::parse(&text, Path::new("t.toml")).map_err(|e| match e {
            crate::config::ConfigError::Invalid { diagnostics, .. } => diagnostics
                .iter()
                .map(|d| format!("{}: {}", d.line, d.message))
                .collect(),
            other => vec![other.to_string()],
        })
    }

    #[test]
    fn tls_mistakes_point_at_their_setting() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let errs = parse_upstream(&format!(
            "[upstream.tls]\nca_file = \"{}\"\n",
            missing.display()
        ))
        .unwrap_err();
        assert!(
            errs[0].starts_with("12: [upstream.tls]: cannot read"),
            "{errs:?}"
        );
        let errs = parse_upstream("[upstream.tls]\nkey_file = \"k.pem\"\n").unwrap_err();
        assert_eq!(
            errs,
            ["12: [upstream.tls]: `key_file` is set without `cert_file`"]
        );
        let errs = parse_upstream("[upstream.tls]\nca_file = \"/dev/null\"\n").unwrap_err();
        assert!(errs[0].contains("is not a regular file"), "{errs:?}");
    }

    #[test]
    fn the_names_of_earlier_releases_are_still_read() {
        let errs = parse_upstream("[upstream.tls]\nclient_key_file = \"k.pem\"\n").unwrap_err();
        assert_eq!(
            errs,
            ["12: [upstream.tls]: `key_file` is set without `cert_file`"]
        );
    }

    #[test]
    fn replaced_certificate_files_make_the_settings_differ_for_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        let ca = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.self_signed(&key).unwrap().pem()
        };
        let table = format!("[upstream.tls]\nca_file = \"{}\"\n", ca_file.display());
        std::fs::write(&ca_file, ca("first")).unwrap();
        let before = parse_upstream(&table).unwrap().upstream.tls;
        std::fs::write(&ca_file, ca("second")).unwrap();
        let after = parse_upstream(&table).unwrap().upstream.tls;
        assert!(before.is_some());
        assert_ne!(format!("{before:?}"), format!("{after:?}"));
    }

    #[test]
    fn a_password_without_a_user_name_is_refused() {
        let errs = parse_upstream("password = \"x\"\n").unwrap_err();
        assert_eq!(errs, ["11: a password is set without `username`"]);
    }

    #[test]
    fn one_trailing_line_end_is_stripped_from_a_password_file() {
        assert_eq!(strip_line_end("secret\n"), "secret");
        assert_eq!(strip_line_end("secret\r\n"), "secret");
        assert_eq!(strip_line_end("secret"), "secret");
        assert_eq!(strip_line_end("secret \n\n"), "secret \n");
    }
}
