//! Which bus a tree uses: the embedded hub (the default) or a NATS server or cluster, and how
//! to reach and authenticate to NATS.
//!
//! Chosen, in order, by `start --bus URL`, the `OXWORK_BUS` environment variable, or
//! [`set_default_bus`] in the program; otherwise the hub. The master hands its choice to every
//! process it starts through `OXWORK_BUS`; credentials and TLS files come from the environment
//! (`OXWORK_BUS_*`), which every process inherits.

use std::path::PathBuf;
use std::sync::Mutex;

use super::BusError;

/// The environment variable naming the bus (`hub` or `nats://host:port[,nats://...]`).
pub(crate) const BUS_ENV: &str = "OXWORK_BUS";

static PROGRAM_DEFAULT: Mutex<Option<String>> = Mutex::new(None);

/// Makes the program use this bus when neither `--bus` nor `OXWORK_BUS` says otherwise
/// (`"nats://10.0.0.5:4222"`, several addresses separated by commas, or `"hub"`). Call it
/// before [`run_all`](crate::run_all).
pub fn set_default_bus(url: &str) {
    if let Ok(mut d) = PROGRAM_DEFAULT.lock() {
        *d = Some(url.to_string());
    }
}

pub(crate) fn program_default() -> Option<String> {
    PROGRAM_DEFAULT.lock().ok().and_then(|d| d.clone())
}

/// The bus a tree uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BusChoice {
    /// The embedded hub the master supervises.
    Hub,
    /// A NATS server or cluster.
    Nats(Box<NatsSettings>),
}

/// How to reach a NATS server or cluster.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsSettings {
    /// Server URLs (`nats://`, `tls://`), credentials inside them allowed
    /// (`nats://user:pass@host:4222`, `nats://token@host:4222`).
    pub servers: Vec<String>,
    /// Token authentication.
    pub token: Option<String>,
    /// User and password authentication.
    pub user_password: Option<(String, String)>,
    /// A `.creds` file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// An NKey seed (`SU...`).
    pub nkey_seed: Option<String>,
    /// A PEM file of certificate authorities to trust for TLS to NATS.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and key (PEM) for TLS to NATS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Refuse to talk to NATS without TLS.
    pub require_tls: bool,
    /// How many copies JetStream keeps of every stream (task queues, dead letters, shared
    /// state): `OXWORK_BUS_REPLICAS`. `None`: the cluster's size up to 3, as the server says
    /// (1 on a single server).
    pub replicas: Option<usize>,
    /// How often the connection is checked with a ping (`OXWORK_BUS_PING`, seconds; default
    /// 2): a link that stops answering is noticed after two unanswered pings, so a partition
    /// shows in `status` within a few seconds instead of minutes.
    pub ping_interval: std::time::Duration,
}

/// The default [`NatsSettings::ping_interval`].
pub(crate) const DEFAULT_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log line.
        f.debug_struct("NatsSettings")
            .field("servers", &self.display_servers())
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("user", &self.user_password.as_ref().map(|(u, _)| u))
            .field("credentials_file", &self.credentials_file)
            .field("nkey_seed", &self.nkey_seed.as_ref().map(|_| "***"))
            .field("tls_ca", &self.tls_ca)
            .field("require_tls", &self.require_tls)
            .finish()
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn env_text(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl NatsSettings {
    /// Parses a comma-separated list of server URLs; authentication and TLS settings come from
    /// `OXWORK_BUS_TOKEN`, `OXWORK_BUS_USER` + `OXWORK_BUS_PASSWORD`, `OXWORK_BUS_CREDS`,
    /// `OXWORK_BUS_NKEY`, `OXWORK_BUS_CA`, `OXWORK_BUS_CERT` + `OXWORK_BUS_KEY` and
    /// `OXWORK_BUS_TLS=required`.
    pub fn from_urls_and_env(urls: &str) -> Result<NatsSettings, BusError> {
        let mut servers = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let scheme = url.split("://").next().unwrap_or("");
            if !url.contains("://") || !matches!(scheme, "nats" | "tls") {
                return Err(BusError::Config(format!(
                    "bus address {url:?} is not a NATS URL (nats://host:port or tls://host:port)"
                )));
            }
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| BusError::Config(format!("bus address {}: {e}", redact(url))))?;
            servers.push(url.to_string());
        }
        if servers.is_empty() {
            return Err(BusError::Config("no NATS server address given".into()));
        }
        let user_password = match (env_text("OXWORK_BUS_USER"), env_text("OXWORK_BUS_PASSWORD")) {
            (Some(u), p) => Some((u, p.unwrap_or_default())),
            _ => None,
        };
        let tls_client = match (env_path("OXWORK_BUS_CERT"), env_path("OXWORK_BUS_KEY")) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(BusError::Config(
                    "OXWORK_BUS_CERT and OXWORK_BUS_KEY go together".into(),
                ))
            }
        };
        let replicas = match env_text("OXWORK_BUS_REPLICAS") {
            None => None,
            Some(v) => match v.parse::<usize>() {
                Ok(n @ 1..=5) => Some(n),
                _ => {
                    return Err(BusError::Config(format!(
                        "OXWORK_BUS_REPLICAS={v:?}: JetStream keeps 1 to 5 replicas"
                    )))
                }
            },
        };
        let ping_interval = match env_text("OXWORK_BUS_PING") {
            None => DEFAULT_PING_INTERVAL,
            Some(v) => match v.parse::<f64>() {
                Ok(s) if s > 0.0 && s <= 3600.0 => std::time::Duration::from_secs_f64(s),
                _ => {
                    return Err(BusError::Config(format!(
                        "OXWORK_BUS_PING={v:?}: seconds between pings, above 0"
                    )))
                }
            },
        };
        Ok(NatsSettings {
            replicas,
            ping_interval,
            require_tls: servers.iter().any(|s| s.starts_with("tls://"))
                || env_text("OXWORK_BUS_TLS").as_deref() == Some("required"),
            servers,
            token: env_text("OXWORK_BUS_TOKEN"),
            user_password,
            credentials_file: env_path("OXWORK_BUS_CREDS"),
            nkey_seed: env_text("OXWORK_BUS_NKEY"),
            tls_ca: env_path("OXWORK_BUS_CA"),
            tls_client,
        })
    }

    /// The server list with any password or token hidden, for logs and `status`.
    pub fn display_servers(&self) -> String {
        self.servers
            .iter()
            .map(|s| redact(s))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client options these settings describe.
    pub(crate) fn connect_options(
        &self,
        name: &str,
    ) -> Result<async_nats::ConnectOptions, BusError> {
        let mut o = async_nats::ConnectOptions::new()
            .name(name)
            .ping_interval(self.ping_interval);
        if let Some(path) = &self.credentials_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                BusError::Config(format!(
                    "cannot read credentials file {}: {e}",
                    path.display()
                ))
            })?;
            o = o.credentials(&text).map_err(|e| {
                BusError::Config(format!("credentials file {}: {e}", path.display()))
            })?;
        }
        if let Some(seed) = &self.nkey_seed {
            o = o.nkey(seed.clone());
        }
        if let Some(token) = &self.token {
            o = o.token(token.clone());
        }
        if let Some((u, p)) = &self.user_password {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        if self.require_tls {
            o = o.require_tls(true);
        }
        Ok(o)
    }

    /// The servers as the client takes them.
    pub(crate) fn server_addrs(&self) -> Result<Vec<async_nats::ServerAddr>, BusError> {
        self.servers
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|e| BusError::Config(format!("bus address {}: {e}", redact(s))))
            })
            .collect()
    }
}

/// `nats://user:secret@host` → `nats://user:***@host`; `nats://token@host` → `nats://***@host`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((creds, host)) => match creds.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_string(),
    }
}

impl BusChoice {
    /// Parses `hub` or a NATS URL list.
    pub(crate) fn parse(text: &str) -> Result<BusChoice, BusError> {
        let text = text.trim();
        if text.is_empty() || text == "hub" {
            return Ok(BusChoice::Hub);
        }
        NatsSettings::from_urls_and_env(text).map(|s| BusChoice::Nats(Box::new(s)))
    }

    /// The choice a process was given by its master (or its environment).
    pub(crate) fn from_env() -> Result<BusChoice, BusError> {
        match std::env::var(BUS_ENV) {
            Ok(v) => BusChoice::parse(&v),
            Err(_) => Ok(BusChoice::Hub),
        }
    }

    /// What `status` shows.
    pub(crate) fn describe(&self) -> String {
        match self {
            BusChoice::Hub => "hub".into(),
            BusChoice::Nats(n) => format!("nats {}", n.display_servers()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_is_the_default_spelling() {
        assert_eq!(BusChoice::parse("hub"), Ok(BusChoice::Hub));
        assert_eq!(BusChoice::parse(""), Ok(BusChoice::Hub));
    }

    #[test]
    fn several_nats_addresses_are_one_cluster() {
        let BusChoice::Nats(n) = BusChoice::parse("nats://a:4222, nats://b:4223").expect("parse")
        else {
            panic!("not nats")
        };
        assert_eq!(n.servers, ["nats://a:4222", "nats://b:4223"]);
        assert!(!n.require_tls);
    }

    #[test]
    fn tls_scheme_requires_tls() {
        let BusChoice::Nats(n) = BusChoice::parse("tls://a:4222").expect("parse") else {
            panic!("not nats")
        };
        assert!(n.require_tls);
    }

    #[test]
    fn other_schemes_are_a_clear_error() {
        let e = BusChoice::parse("redis://a:6379").expect_err("redis");
        assert!(e.to_string().contains("not a NATS URL"), "{e}");
        assert!(BusChoice::parse("localhost:4222").is_err());
    }

    #[test]
    fn the_program_default_is_what_set_default_bus_said() {
        set_default_bus("nats://10.0.0.5:4222");
        assert_eq!(program_default().as_deref(), Some("nats://10.0.0.5:4222"));
    }

    #[test]
    fn passwords_and_tokens_are_hidden() {
        assert_eq!(redact("nats://u:secret@h:1"), "nats://u:***@h:1");
        assert_eq!(redact("nats://tok@h:1"), "nats://***@h:1");
        assert_eq!(redact("nats://h:1"), "nats://h:1");
    }
}
