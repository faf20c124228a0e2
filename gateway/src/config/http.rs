//! The `[http]` section: where the metrics and health endpoints listen.
//! Absent, there is no HTTP server.

use std::fmt::Write;
use std::net::SocketAddr;

use super::diag::Cx;
use super::raw::RawHttp;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Address and port of `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// Whether `listen` may be an address other hosts can reach: the
    /// endpoints have no authentication, so that is a decision the file
    /// must state.
    pub allow_non_loopback: bool,
}

impl HttpConfig {
    /// Where the server listens when `[http]` gives no `listen`: loopback,
    /// on the port commonly left free for a local exporter.
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:9108";

    /// The section as `check` prints it.
    pub(super) fn render(this: Option<&Self>, s: &mut String) {
        match this {
            None => {
                let _ = writeln!(s, "\n# [http] is absent: no HTTP server.");
            }
            Some(h) => {
                let _ = writeln!(
                    s,
                    "\n[http]\nlisten = \"{}\"\nallow_non_loopback = {}",
                    h.listen, h.allow_non_loopback
                );
            }
        }
    }
}

impl Cx<'_> {
    pub(super) fn http(&mut self, raw: RawHttp) -> Option<HttpConfig> {
        let allow_non_loopback = raw.allow_non_loopback.unwrap_or(false);
        let listen = match &raw.listen {
            None => HttpConfig::DEFAULT_LISTEN.parse().ok()?,
            Some(v) => match v.get_ref().parse::<SocketAddr>() {
                Ok(addr) => {
                    if !addr.ip().is_loopback() && !allow_non_loopback {
                        self.at(
                            v.span(),
                            format!("`listen = \"{addr}\"` can be reached from other hosts, and the endpoints have no authentication"),
                            Some("listen on a loopback address such as \"127.0.0.1:9108\" (a local Prometheus agent scrapes it), or add `allow_non_loopback = true` to mean it".into()),
                        );
                    }
                    addr
                }
                Err(_) => {
                    self.at(
                        v.span(),
                        format!("`{}` is not an IP address and port", v.get_ref()),
                        Some(format!(
                            "write an address and a port, such as \"{}\" or \"[::1]:9108\" (no host names)",
                            HttpConfig::DEFAULT_LISTEN
                        )),
                    );
                    return None;
                }
            },
        };
        Some(HttpConfig {
            listen,
            allow_non_loopback,
        })
    }
}
