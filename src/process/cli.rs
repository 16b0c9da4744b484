//! The command line every oxwork program answers: `start [-d] [--group NAME]`, `stop [-g]`,
//! `restart`, `reload [-g]`, `status [--json]`, `connections [--json]`, `cluster [--json]`;
//! global `--bus URL` and `--node NAME`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use super::control::{Request, Response};
use super::tree::{program_name, PathChoices, Paths, TreeOptions};
use super::{env, master, status, sys};
use crate::bus::config::BusChoice;
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::registry;

#[derive(Parser, Debug)]
#[command(
    about = "Runs and operates this oxwork server (Workerman-style commands)",
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Directory for the pid file, control socket and log file [default: a directory per
    /// program under the system's temporary directory].
    #[arg(long, global = true, env = "OXWORK_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// The pid file [default: RUN_DIR/master.pid].
    #[arg(long, global = true, env = "OXWORK_PID_FILE")]
    pid_file: Option<PathBuf>,
    /// Where a daemon writes its output [default: RUN_DIR/oxwork.log].
    #[arg(long, global = true, env = "OXWORK_LOG_FILE")]
    log_file: Option<PathBuf>,
    /// The bus between processes and machines: `hub` (the embedded hub, default) or NATS,
    /// `nats://host:4222` (several, comma-separated, for a cluster; `tls://` for TLS).
    /// Credentials: in the URL or OXWORK_BUS_USER/PASSWORD/TOKEN/CREDS/NKEY; TLS files:
    /// OXWORK_BUS_CA, OXWORK_BUS_CERT, OXWORK_BUS_KEY; stream copies OXWORK_BUS_REPLICAS
    /// [default: the cluster's size up to 3]; ping interval OXWORK_BUS_PING [default: 2 s].
    #[arg(long, global = true, env = "OXWORK_BUS", value_name = "URL")]
    bus: Option<String>,
    /// This tree's node name, unique in a cluster [default: the host name]. Two nodes of one
    /// program on one machine need different names (each gets its own run directory); give
    /// the same --node to stop, status and the other commands.
    #[arg(long, global = true, env = "OXWORK_NODE", value_name = "NAME")]
    node: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the master and its workers in the foreground (Ctrl-C stops them).
    Start {
        /// Run in the background as a daemon, output to the log file.
        #[arg(short = 'd', long)]
        daemon: bool,
        /// Run only this worker group on this node (repeatable): one program, different
        /// roles on different machines.
        #[arg(long = "group", value_name = "NAME")]
        groups: Vec<String>,
        /// Serve Prometheus metrics at http://ADDR/metrics from the master (for example
        /// 127.0.0.1:9100).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
    },
    /// Stop everything: no new connection is accepted, requests under way are answered, and
    /// every connection hears its farewell (WebSocket close 1001) before it closes.
    Stop {
        /// Graceful: stop accepting, serve open connections until they close or each worker's
        /// graceful_timeout passes (default 1 hour), then say goodbye and exit.
        #[arg(short = 'g', long)]
        graceful: bool,
        /// With -g: serve open connections for at most this many seconds.
        #[arg(long, value_name = "SECS", requires = "graceful")]
        timeout: Option<u64>,
    },
    /// Stop, then start again.
    Restart {
        /// Start again as a daemon.
        #[arg(short = 'd', long)]
        daemon: bool,
        /// Stop gracefully first.
        #[arg(short = 'g', long)]
        graceful: bool,
        /// With -g: serve open connections for at most this many seconds.
        #[arg(long, value_name = "SECS", requires = "graceful")]
        timeout: Option<u64>,
        /// Run only this worker group on this node (repeatable).
        #[arg(long = "group", value_name = "NAME")]
        groups: Vec<String>,
        /// Serve Prometheus metrics at http://ADDR/metrics from the master.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
    },
    /// Replace every worker process, one at a time, with no connection refused: HTTP
    /// connections end after their next response, long-lived ones hear their farewell
    /// (WebSocket close 1012) and reconnect to the new processes.
    Reload {
        /// Old processes keep serving their open connections until they close or each
        /// worker's graceful_timeout passes (default 1 hour).
        #[arg(short = 'g', long)]
        graceful: bool,
        /// With -g: serve open connections for at most this many seconds.
        #[arg(long, value_name = "SECS", requires = "graceful")]
        timeout: Option<u64>,
    },
    /// Show the master and every worker process.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Live: the table refreshed in place every second until Ctrl-C (Workerman's
        /// `status -d`).
        #[arg(short = 'd', long = "live", conflicts_with = "json")]
        live: bool,
    },
    /// List every open connection of every worker process.
    Connections {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the nodes on the bus, with their worker groups and process counts.
    Cluster {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Parses the command (`args` without the program name) and carries it out.
pub(crate) fn main<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv = std::iter::once(std::ffi::OsString::from(program_name()))
        .chain(args.into_iter().map(Into::into));
    let cli = Cli::parse_from(argv);
    let paths = Paths::resolve(&PathChoices {
        run_dir: cli.run_dir.clone(),
        node: cli.node.clone(),
        pid_file: cli.pid_file.clone(),
        log_file: cli.log_file.clone(),
    })?;
    let program = program_name();
    let tree = |groups: Vec<String>, metrics: &Option<String>| -> Result<TreeOptions> {
        let metrics = match metrics {
            Some(a) => Some(a.parse::<std::net::SocketAddr>().map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("--metrics {a:?}: an address such as 127.0.0.1:9100 ({e})"),
                )
            })?),
            None => None,
        };
        let bus_spec = cli
            .bus
            .clone()
            .or_else(crate::bus::config::program_default)
            .unwrap_or_else(|| "hub".into());
        let bus = BusChoice::parse(&bus_spec)
            .map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?;
        // Any name works in subjects (they escape it); '/' separates a worker address's parts.
        let node = cli.node.clone().unwrap_or_else(sys::hostname);
        if node.trim().is_empty() || node.contains('/') || node.contains(char::is_whitespace) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("--node {node:?}: a node name is one word, without '/'"),
            ));
        }
        Ok(TreeOptions {
            bus,
            bus_spec,
            node,
            groups,
            metrics,
        })
    };
    match cli.command {
        Command::Start {
            daemon,
            ref groups,
            ref metrics,
        } => start(&paths, daemon, tree(groups.clone(), metrics)?),
        Command::Stop { graceful, timeout } => stop(
            &paths,
            &program,
            &Request::Stop {
                graceful,
                restart: false,
                timeout_secs: timeout,
            },
        ),
        Command::Restart {
            daemon,
            graceful,
            timeout,
            ref groups,
            ref metrics,
        } => {
            let options = tree(groups.clone(), metrics)?;
            let stopping = Request::Stop {
                graceful,
                restart: true,
                timeout_secs: timeout,
            };
            match stop(&paths, &program, &stopping) {
                Err(e) if !e.is_not_running() => return Err(e),
                _ => {}
            }
            start(&paths, daemon, options)
        }
        Command::Reload { graceful, timeout } => {
            match request(
                &paths,
                &Request::Reload {
                    graceful,
                    timeout_secs: timeout,
                },
                Duration::from_secs(600),
            )? {
                Response::Ok { message, .. } => println!("{program}: {message}"),
                other => return Err(unexpected(other)),
            }
            Ok(())
        }
        Command::Status { live: true, .. } => live_status(&paths, &program),
        Command::Status { json, .. } => {
            match request(&paths, &Request::Status, Duration::from_secs(30))? {
                Response::Status(report) if json => println!("{}", to_json(&report)?),
                Response::Status(report) => print!("{}", status::render_status(&report, &program)),
                other => return Err(unexpected(other)),
            }
            Ok(())
        }
        Command::Cluster { json } => {
            match request(&paths, &Request::Cluster, Duration::from_secs(30))? {
                Response::Cluster { nodes } if json => println!("{}", to_json(&nodes)?),
                Response::Cluster { nodes } => print!("{}", super::cluster::render(&nodes)),
                other => return Err(unexpected(other)),
            }
            Ok(())
        }
        Command::Connections { json } => {
            match request(&paths, &Request::Connections, Duration::from_secs(30))? {
                Response::Connections { rows } if json => println!("{}", to_json(&rows)?),
                Response::Connections { rows } => print!("{}", status::render_connections(&rows)),
                other => return Err(unexpected(other)),
            }
            Ok(())
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::new(ErrorKind::Control, e.to_string()))
}

/// `status -d`: the table redrawn in place every second, until Ctrl-C (which ends it with
/// status 0) or until the tree stops (status 1, saying so).
fn live_status(paths: &Paths, program: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the status loop", e))?;
    runtime.block_on(async {
        // Listening from the start, so a Ctrl-C while a reading is under way is not missed.
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|e| Error::io("cannot listen for Ctrl-C", e))?;
        let mut stdout = std::io::stdout();
        loop {
            let report = match request(paths, &Request::Status, Duration::from_secs(30)) {
                Ok(Response::Status(report)) => report,
                Ok(other) => return Err(unexpected(other)),
                Err(e) => {
                    println!("\n{program}: {e}");
                    return Err(e);
                }
            };
            // Home, clear the screen, then the table: one write, so no half-drawn frame.
            let frame = format!(
                "\x1b[H\x1b[2J{}refreshed every second; Ctrl-C to stop\n",
                status::render_status(&report, program)
            );
            let _ = stdout.write_all(frame.as_bytes());
            let _ = stdout.flush();
            tokio::select! {
                _ = interrupt.recv() => {
                    println!();
                    return Ok(());
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}

fn unexpected(r: Response) -> Error {
    match r {
        Response::Error { message } => Error::new(ErrorKind::Control, message),
        other => Error::new(ErrorKind::Control, format!("unexpected answer: {other:?}")),
    }
}

fn start(paths: &Paths, daemon: bool, options: TreeOptions) -> Result<()> {
    let configs: Vec<_> = registry::all().iter().map(|w| w.config()).collect();
    let in_daemon = std::env::var(env::ROLE).as_deref() == Ok("daemon");
    if !daemon || in_daemon {
        return master::run(paths, configs, in_daemon, options);
    }
    // Said here, in the terminal, rather than only in the daemon's log.
    options.check_bus(&configs)?;
    if sys::pid_file_locked(&paths.pid_file) {
        let pid = sys::read_pid(&paths.pid_file)
            .map(|p| p.to_string())
            .unwrap_or("?".into());
        return Err(Error::new(
            ErrorKind::AlreadyRunning,
            format!("already running (master pid {pid})"),
        ));
    }
    sys::check_private_file(&paths.pid_file, "pid file")?;
    let log = sys::open_private_file(&paths.log_file, sys::FileUse::Append, "log file")?;
    let exe = std::env::current_exe().map_err(|e| Error::io("cannot find this program", e))?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let program = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "oxwork".into());
    let mut child = sys::command(sys::SpawnSpec {
        exe: &exe,
        title: Some(format!("{program}: master")),
        args: &args,
        env: vec![(env::ROLE.to_string(), "daemon".to_string())],
        inherit_fds: Vec::new(),
        stdio_to: Some(&log),
        daemon: true,
        identity: None,
    })
    .and_then(|mut c| c.spawn())
    .map_err(|e| Error::io("cannot start the daemon", e))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = log_tail(&paths.log_file, log_start);
            return Err(Error::new(
                ErrorKind::Io,
                format!("the daemon exited at start ({status}):\n{tail}"),
            ));
        }
        if let Ok(Response::Ok { master_pid, .. }) =
            request(paths, &Request::Ping, Duration::from_secs(15))
        {
            println!(
                "{} started as a daemon (master pid {master_pid}); log: {}",
                program_name(),
                paths.log_file.display()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(Error::new(
        ErrorKind::Control,
        format!(
            "the daemon did not answer; see {}",
            paths.log_file.display()
        ),
    ))
}

fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        use std::io::Seek;
        let _ = f.seek(std::io::SeekFrom::Start(from));
        let _ = f.take(64 * 1024).read_to_string(&mut text);
    }
    text
}

fn stop(paths: &Paths, program: &str, request: &Request) -> Result<()> {
    let graceful = matches!(request, Request::Stop { graceful: true, .. });
    let mut stream = connect(paths)?;
    send_request(&mut stream, request)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| Error::io("control socket", e))?;
    let mut reader = BufReader::new(stream);
    let master_pid = match read_response(&mut reader)? {
        Response::Ok { master_pid, .. } => master_pid,
        other => return Err(unexpected(other)),
    };
    println!(
        "{program}: stopping (master pid {master_pid}){}",
        if graceful { " gracefully" } else { "" }
    );
    // The master holds this connection open until it exits; a graceful stop takes as long as
    // the clients (up to the graceful timeout), so it is waited for without a limit.
    let wait_limit = if graceful {
        Duration::from_secs(u32::MAX as u64)
    } else {
        Duration::from_secs(600)
    };
    let started = Instant::now();
    let _ = reader
        .get_ref()
        .set_read_timeout((!graceful).then_some(wait_limit));
    // Nothing more is expected on it: whatever comes is read and forgotten, in bounded pieces.
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
    while sys::pid_file_locked(&paths.pid_file) && started.elapsed() < wait_limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("{program}: stopped");
    Ok(())
}

fn connect(paths: &Paths) -> Result<UnixStream> {
    UnixStream::connect(&paths.control_socket).map_err(|e| {
        let running = sys::pid_file_locked(&paths.pid_file);
        if running {
            Error::io(
                format!(
                    "a master holds {} but its control socket {} does not answer",
                    paths.pid_file.display(),
                    paths.control_socket.display()
                ),
                e,
            )
        } else {
            Error::new(
                ErrorKind::NotRunning,
                format!(
                    "{} is not running (no master for run directory {})",
                    program_name(),
                    paths.run_dir.display()
                ),
            )
        }
    })
}

fn send_request(stream: &mut UnixStream, req: &Request) -> Result<()> {
    let mut line =
        serde_json::to_vec(req).map_err(|e| Error::new(ErrorKind::Control, e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| Error::io("cannot talk to the master", e))
}

fn read_response(reader: &mut BufReader<UnixStream>) -> Result<Response> {
    use std::io::Read as _;
    let mut line = String::new();
    let limit = super::control::MAX_LINE as u64;
    reader
        .by_ref()
        .take(limit)
        .read_line(&mut line)
        .map_err(|e| Error::io("no answer from the master", e))?;
    if line.len() as u64 >= limit && !line.ends_with('\n') {
        return Err(Error::new(
            ErrorKind::Control,
            format!("the master's answer is longer than {limit} bytes"),
        ));
    }
    if line.is_empty() {
        return Err(Error::new(
            ErrorKind::Control,
            "the master closed the connection",
        ));
    }
    serde_json::from_str(&line).map_err(|e| {
        Error::new(
            ErrorKind::Control,
            format!("bad answer from the master: {e}"),
        )
    })
}

fn request(paths: &Paths, req: &Request, limit: Duration) -> Result<Response> {
    let mut stream = connect(paths)?;
    stream
        .set_read_timeout(Some(limit))
        .map_err(|e| Error::io("control socket", e))?;
    send_request(&mut stream, req)?;
    read_response(&mut BufReader::new(stream))
}
