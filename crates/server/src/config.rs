//! Settings: defaults, then a TOML file, then `SHORTLINKS_*` environment variables, then flags.
//!
//! Each source is a [`SettingsLayer`] of optional values; a higher layer wins field by field.
//! The binary's flags carry their environment variable (clap's `env`), so "flags over env"
//! is settled there, and [`SettingsLayer::over`] puts both over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shortlinks_core::CodeLength;

use crate::ServerError;

/// One source of settings; `None` means "not set here".
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SettingsLayer {
    /// Where the sled database lives.
    pub data_dir: Option<PathBuf>,
    /// The address to listen on, such as `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// The base of issued short links, such as `https://sho.rt`.
    pub public_url: Option<String>,
    /// Characters in new codes, 8 to 22.
    pub code_length: Option<usize>,
    /// The largest accepted request body.
    pub max_body_bytes: Option<usize>,
    /// How long a client may take to send its request headers.
    pub header_read_timeout_secs: Option<u64>,
    /// How long a client may take to send a request body.
    pub body_read_timeout_secs: Option<u64>,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace_secs: Option<u64>,
}

impl SettingsLayer {
    /// Reads a TOML file; unknown keys are an error, so typos do not pass silently.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ServerError::io(format!("reading {}", path.display()), e))?;
        toml::from_str(&text).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))
    }

    /// This layer over `lower`: every field set here wins.
    pub fn over(self, lower: SettingsLayer) -> SettingsLayer {
        SettingsLayer {
            data_dir: self.data_dir.or(lower.data_dir),
            listen: self.listen.or(lower.listen),
            public_url: self.public_url.or(lower.public_url),
            code_length: self.code_length.or(lower.code_length),
            max_body_bytes: self.max_body_bytes.or(lower.max_body_bytes),
            header_read_timeout_secs: self.header_read_timeout_secs.or(lower.header_read_timeout_secs),
            body_read_timeout_secs: self.body_read_timeout_secs.or(lower.body_read_timeout_secs),
            shutdown_grace_secs: self.shutdown_grace_secs.or(lower.shutdown_grace_secs),
        }
    }

    /// Fills in defaults and checks every value.
    pub fn resolve(self) -> Result<Settings, ServerError> {
        let listen = self.listen.as_deref().unwrap_or(Settings::DEFAULT_LISTEN);
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| ServerError::Config(format!("listen {listen:?} is not an address like 127.0.0.1:8080")))?;
        let code_length = CodeLength::new(self.code_length.unwrap_or(CodeLength::DEFAULT.get()))?;
        let public_url = self.public_url.map(|u| PublicUrl::parse(&u)).transpose()?;
        let max_body_bytes = self.max_body_bytes.unwrap_or(Limits::DEFAULT.max_body_bytes);
        if max_body_bytes == 0 {
            return Err(ServerError::Config("max_body_bytes must be positive".into()));
        }
        let secs = |v: Option<u64>, default: Duration, name: &str| match v {
            Some(0) => Err(ServerError::Config(format!("{name} must be positive"))),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(default),
        };
        Ok(Settings {
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from(Settings::DEFAULT_DATA_DIR)),
            listen,
            public_url,
            code_length,
            limits: Limits {
                max_body_bytes,
                header_read_timeout: secs(
                    self.header_read_timeout_secs,
                    Limits::DEFAULT.header_read_timeout,
                    "header_read_timeout_secs",
                )?,
                body_read_timeout: secs(
                    self.body_read_timeout_secs,
                    Limits::DEFAULT.body_read_timeout,
                    "body_read_timeout_secs",
                )?,
                shutdown_grace: secs(self.shutdown_grace_secs, Limits::DEFAULT.shutdown_grace, "shutdown_grace_secs")?,
            },
        })
    }
}

/// Complete, checked settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the sled database lives.
    pub data_dir: PathBuf,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The base of issued links; derived from the bound address when unset.
    pub public_url: Option<PublicUrl>,
    /// Characters in new codes.
    pub code_length: CodeLength,
    /// Request size and time limits.
    pub limits: Limits,
}

impl Settings {
    /// The default data directory.
    pub const DEFAULT_DATA_DIR: &'static str = "./data";
    /// The default listen address: loopback only, until an operator decides otherwise.
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
}

/// Request size and time limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest accepted request body (413 above it).
    pub max_body_bytes: usize,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request body (408 after it).
    pub body_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// 1 MiB bodies, 10 s for headers, 30 s for a body, 10 s to drain.
    pub const DEFAULT: Limits = Limits {
        max_body_bytes: 1 << 20,
        header_read_timeout: Duration::from_secs(10),
        body_read_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(10),
    };
}

/// The base of issued short links: `http` or `https`, no query or fragment, no trailing `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl(String);

impl PublicUrl {
    /// Checks a configured base URL.
    pub fn parse(input: &str) -> Result<Self, ServerError> {
        let bad = |why: &str| ServerError::Config(format!("public_url {input:?} {why}"));
        let url = url::Url::parse(input).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad("must be an http or https URL with a host"));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(bad("must not have a query, a fragment or credentials"));
        }
        Ok(Self(url.as_str().trim_end_matches('/').to_owned()))
    }

    /// For a server that was given none: its own address, with a wildcard replaced by loopback.
    pub fn from_bound(addr: SocketAddr) -> Self {
        let mut addr = addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        Self(format!("http://{addr}"))
    }

    /// The base, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_layers_win_field_by_field() {
        let file = SettingsLayer {
            listen: Some("127.0.0.1:1".into()),
            code_length: Some(10),
            data_dir: Some("/file".into()),
            ..Default::default()
        };
        let env_and_flags = SettingsLayer { listen: Some("127.0.0.1:2".into()), ..Default::default() };
        let s = env_and_flags.over(file).resolve().unwrap();
        assert_eq!(s.listen.port(), 2);
        assert_eq!(s.code_length.get(), 10);
        assert_eq!(s.data_dir, PathBuf::from("/file"));
        assert_eq!(s.limits, Limits::DEFAULT);
    }

    #[test]
    fn defaults() {
        let s = SettingsLayer::default().resolve().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.public_url, None);
        assert_eq!(s.code_length.get(), 12);
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let bad = [
            SettingsLayer { listen: Some("localhost".into()), ..Default::default() },
            SettingsLayer { code_length: Some(4), ..Default::default() },
            SettingsLayer { public_url: Some("ftp://x".into()), ..Default::default() },
            SettingsLayer { public_url: Some("https://x.example/?a=b".into()), ..Default::default() },
            SettingsLayer { max_body_bytes: Some(0), ..Default::default() },
            SettingsLayer { shutdown_grace_secs: Some(0), ..Default::default() },
        ];
        for layer in bad {
            assert!(layer.clone().resolve().is_err(), "{layer:?}");
        }
        let unknown: Result<SettingsLayer, _> = toml::from_str("lisen = \"127.0.0.1:1\"");
        assert!(unknown.is_err(), "a typo in the file is an error");
    }

    #[test]
    fn public_urls() {
        assert_eq!(PublicUrl::parse("https://sho.rt/").unwrap().as_str(), "https://sho.rt");
        assert_eq!(PublicUrl::parse("https://x.example/s/").unwrap().as_str(), "https://x.example/s");
        assert_eq!(PublicUrl::from_bound("0.0.0.0:80".parse().unwrap()).as_str(), "http://127.0.0.1:80");
        assert_eq!(PublicUrl::from_bound("[::]:81".parse().unwrap()).as_str(), "http://[::1]:81");
    }
}
