//! Shared harness: start an example binary as a real process tree, talk to it as a client
//! would, and always reap it (a guard kills the master, whose workers die with it).

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of an example binary built by `cargo test` next to the test binaries.
/// A temporary directory only this user may enter (0700), as a run directory must be.
pub fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("tempdir")
}

pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} not built; run `cargo build --examples`",
        bin.display()
    );
    bin
}

/// Where ports handed out by [`free_port`] are claimed, one file each, across every test
/// process of the machine.
fn port_claims() -> PathBuf {
    std::env::temp_dir().join("oxwork-test-ports")
}

/// A claim older than this belongs to a run that is over (no test lasts this long).
const STALE_CLAIM: Duration = Duration::from_secs(30 * 60);

/// A port free on 127.0.0.1 (TCP and UDP) that no other test of any test process on this
/// machine was given in the last half hour. Chosen below the kernel's ephemeral range (32768
/// and up), so that no outgoing connection takes it between now and the server's bind, and
/// claimed with a file, so that suites run side by side never pick the same one.
pub fn free_port() -> u16 {
    let dir = port_claims();
    std::fs::create_dir_all(&dir).expect("port claims directory");
    for _ in 0..10_000 {
        let port = 20_000 + fastrand::u16(..12_000);
        let claim = dir.join(port.to_string());
        let fresh = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
            .is_ok();
        if !fresh {
            let stale = std::fs::metadata(&claim)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > STALE_CLAIM);
            if !stale {
                continue;
            }
            // Taken over: refresh its time.
            let _ = std::fs::write(&claim, b"");
        }
        let tcp = TcpListener::bind(("127.0.0.1", port)).is_ok();
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if tcp && udp {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000 on 127.0.0.1");
}

pub struct Server {
    pub bin: PathBuf,
    pub run_dir: tempfile::TempDir,
    pub port: u16,
    master: Option<Child>,
    env: Vec<(String, String)>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    /// Starts `example start` in the foreground with `env`, and waits until `expected`
    /// worker processes answer `status`.
    pub fn start(example: &str, env: &[(&str, String)], expected: usize) -> Server {
        Server::start_with_args(example, &[], env, expected)
    }

    /// [`Server::start`] with more arguments after `start` (`--group NAME`, ...).
    pub fn start_with_args(
        example: &str,
        args: &[&str],
        env: &[(&str, String)],
        expected: usize,
    ) -> Server {
        Server::start_program(example_bin(example), args, env, expected)
    }

    /// [`Server::start_with_args`] for the program at `bin` (a copy the test may replace).
    pub fn start_program(
        bin: PathBuf,
        args: &[&str],
        env: &[(&str, String)],
        expected: usize,
    ) -> Server {
        let run_dir = private_tempdir();
        let mut s = Server {
            bin,
            stdout: run_dir.path().join("stdout.log"),
            stderr: run_dir.path().join("stderr.log"),
            run_dir,
            port: 0,
            master: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        let mut start_args = vec!["start"];
        start_args.extend_from_slice(args);
        // A program the test has just copied can be "busy" for a moment: another test's child,
        // forked while the copy was open for writing, holds it until its own exec (ETXTBSY).
        let mut tries = 0;
        let child = loop {
            let spawned = s
                .command(&start_args)
                .stdout(std::fs::File::create(&s.stdout).expect("stdout file"))
                .stderr(std::fs::File::create(&s.stderr).expect("stderr file"))
                .spawn();
            match spawned {
                Err(e) if e.raw_os_error() == Some(26) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.expect("spawn master"),
            }
        };
        s.master = Some(child);
        s.wait_ready(expected);
        s
    }

    /// A command for this program with this server's run directory and environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("OXWORK_RUN_DIR", self.run_dir.path())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        // Own process group, so nothing the test runner receives reaches the tree.
        use std::os::unix::process::CommandExt;
        c.process_group(0);
        c
    }

    /// This server, noted as listening on `port`.
    pub fn with_port(mut self, port: u16) -> Server {
        self.port = port;
        self
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run command")
    }

    pub fn master_pid(&self) -> u32 {
        self.master.as_ref().expect("master").id()
    }

    pub fn wait_ready(&mut self, expected: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .master
                .as_mut()
                .and_then(|m| m.try_wait().ok().flatten())
            {
                panic!(
                    "the master exited ({status}) before it was ready; stderr:\n{}",
                    self.stderr()
                );
            }
            if let Some(st) = self.try_status() {
                let procs = st["processes"].as_array().map(|a| a.len()).unwrap_or(0);
                let idle = st["processes"]
                    .as_array()
                    .map(|a| a.iter().filter(|p| p["busy"] == false).count())
                    .unwrap_or(0);
                if procs == expected && idle == expected {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "server not ready; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn try_status(&self) -> Option<Value> {
        let out = self.run(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `status --json` as a function another thread can call while this server runs.
    pub fn status_probe(&self) -> impl Fn() -> Option<Value> + Send + 'static {
        let bin = self.bin.clone();
        let run_dir = self.run_dir.path().to_path_buf();
        let env = self.env.clone();
        move || {
            let out = Command::new(&bin)
                .args(["status", "--json"])
                .env("OXWORK_RUN_DIR", &run_dir)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            serde_json::from_slice(&out.stdout).ok()
        }
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("status failed; stderr:\n{}", self.stderr()))
    }

    /// Pids of the live, not retiring, worker processes.
    pub fn worker_pids(&self) -> Vec<u32> {
        let st = self.status();
        let mut pids: Vec<u32> = st["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .filter(|p| p["retiring"] == false)
            .map(|p| p["pid"].as_u64().expect("pid") as u32)
            .collect();
        pids.sort();
        pids
    }

    pub fn connections(&self) -> Vec<Value> {
        let out = self.run(&["connections", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the master to exit by itself; returns whether it did within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let child = self.master.as_mut().expect("master");
        while Instant::now() < deadline {
            if child.try_wait().expect("try_wait").is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.master.take() {
            // Workers carry PR_SET_PDEATHSIG: killing the master takes them down too.
            let _ = child.kill();
            let _ = child.wait();
            // A master that `restart -d` started in this run directory is ours too.
            let pid_file = self.run_dir.path().join("master.pid");
            if let Some(pid) = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
            {
                if pid != child.id() && alive(pid) {
                    kill9(pid);
                }
            }
        }
    }
}

/// True if `pid` is alive.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

/// The parent pid of `pid`.
pub fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after
        .split_whitespace()
        .nth(1)
        .expect("ppid")
        .parse()
        .expect("num")
}

pub fn kill9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A line-protocol client.
pub struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    pub fn connect(port: u16) -> std::io::Result<LineClient> {
        LineClient::from_stream(TcpStream::connect(("127.0.0.1", port))?)
    }

    /// A client on a connected (or connecting) stream.
    pub fn from_stream(s: TcpStream) -> std::io::Result<LineClient> {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(LineClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    pub fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.writer.write_all(format!("{line}\n").as_bytes())
    }

    pub fn recv(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// The next line within `limit`, or `None`.
    pub fn recv_timeout(&mut self, limit: Duration) -> Option<String> {
        let old = self.reader.get_ref().read_timeout().ok().flatten();
        let _ = self.reader.get_ref().set_read_timeout(Some(limit));
        let line = self.recv().ok();
        let _ = self.reader.get_ref().set_read_timeout(old);
        line
    }

    pub fn ask(&mut self, line: &str) -> std::io::Result<String> {
        self.send(line)?;
        self.recv()
    }

    /// True if the server closed the connection (EOF or reset) within the read timeout.
    /// Everything left until the peer's FIN; an error for a reset (or nothing within the
    /// read timeout).
    pub fn read_to_close(&mut self) -> std::io::Result<String> {
        let mut rest = String::new();
        self.reader.read_to_string(&mut rest)?;
        Ok(rest)
    }

    pub fn is_closed_by_peer(&mut self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    pub fn raw(&mut self) -> &mut TcpStream {
        &mut self.writer
    }
}

/// How long a test waits for something that should happen soon (a subscription to reach the
/// hub, a process to be replaced, a count to settle): generous for a loaded 2-core machine
/// (CI under `stress-ng`, two suites at once). A passing test waits only as long as the thing
/// takes; only a failing one waits this long.
pub const SETTLE: Duration = Duration::from_secs(20);

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A single-threaded runtime like a worker process's, for driving the bus from a test.
pub fn local_runtime() -> tokio::runtime::LocalRuntime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build_local(Default::default())
        .expect("runtime")
}

impl Server {
    /// The embedded hub's socket in this server's run directory.
    pub fn hub_path(&self) -> PathBuf {
        self.run_dir.path().join("hub.sock")
    }

    /// Pids of the processes of worker group `name`.
    pub fn group_pids(&self, name: &str) -> Vec<u32> {
        self.status()["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .filter(|p| p["worker"] == name && p["retiring"] == false)
            .map(|p| p["pid"].as_u64().expect("pid") as u32)
            .collect()
    }
}

/// The echo example with `count` processes on a free port, plus extra settings.
pub fn echo(count: usize, extra: &[(&str, String)]) -> Server {
    let port = free_port();
    let mut env = vec![
        ("ECHO_LISTEN", format!("text://127.0.0.1:{port}")),
        ("ECHO_COUNT", count.to_string()),
    ];
    env.extend(extra.iter().cloned());
    let mut s = Server::start("echo", &env, count);
    s.port = port;
    s
}

/// examples/handoff_lab on free ports with `extra` settings: the server, its text port and its
/// WebSocket port. Six processes: two of each group, the pusher and the hub.
pub fn handoff_lab(extra: &[(&str, String)]) -> (Server, u16, u16) {
    handoff_lab_program(example_bin("handoff_lab"), extra)
}

/// [`handoff_lab`] from the program at `bin` (a copy the test may replace). On NATS
/// (`OXWORK_BUS` in `extra`) there is no hub: five processes.
pub fn handoff_lab_program(bin: PathBuf, extra: &[(&str, String)]) -> (Server, u16, u16) {
    let (text_port, ws_port) = (free_port(), free_port());
    let mut env = vec![
        (
            "HANDOFF_TEXT_LISTEN",
            format!("text://127.0.0.1:{text_port}"),
        ),
        (
            "HANDOFF_WS_LISTEN",
            format!("websocket://127.0.0.1:{ws_port}"),
        ),
    ];
    env.extend(extra.iter().cloned());
    let expected = if extra.iter().any(|(k, _)| *k == "OXWORK_BUS") {
        5
    } else {
        6
    };
    (
        Server::start_program(bin, &[], &env, expected),
        text_port,
        ws_port,
    )
}

/// The echo example as a gateway (its connections reachable over the bus), so the tree runs
/// the hub too: `count` workers plus the hub.
pub fn gateway_echo(count: usize, extra: &[(&str, String)]) -> Server {
    let port = free_port();
    let mut env = vec![
        ("ECHO_LISTEN", format!("text://127.0.0.1:{port}")),
        ("ECHO_COUNT", count.to_string()),
        ("ECHO_GATEWAY", "1".to_string()),
    ];
    env.extend(extra.iter().cloned());
    let mut s = Server::start("echo", &env, count + 1);
    s.port = port;
    s
}

/// A `nats-server` of the test's own: JetStream on, its store in a temporary directory, on a
/// free loopback port; killed and reaped on drop.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    dir: tempfile::TempDir,
    extra_config: String,
    jetstream: bool,
}

impl Nats {
    /// Starts one. A machine without `nats-server` fails the test with how to install it
    /// (`.ci/run` installs it).
    pub fn start() -> Nats {
        Nats::start_with("")
    }

    /// [`Nats::start`] with more server configuration (authorization, limits).
    pub fn start_with(extra_config: &str) -> Nats {
        Nats::launch_new(extra_config, true)
    }

    /// A server without JetStream (core NATS only).
    pub fn start_core_only() -> Nats {
        Nats::launch_new("", false)
    }

    fn launch_new(extra_config: &str, jetstream: bool) -> Nats {
        let installed = Command::new("nats-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed,
            "nats-server is not installed: `apt-get install nats-server` (Debian), or put a \
             nats-server 2.9+ binary on PATH; `bash .ci/run` installs it"
        );
        let port = free_port();
        let mut n = Nats {
            child: None,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            dir: tempfile::tempdir().expect("tempdir"),
            extra_config: extra_config.to_string(),
            jetstream,
        };
        n.launch();
        n
    }

    fn launch(&mut self) {
        let store = self.dir.path().join("store");
        let config = self.dir.path().join("nats.conf");
        let jetstream = if self.jetstream {
            format!(
                "jetstream {{ store_dir: {:?} }}",
                store.display().to_string()
            )
        } else {
            String::new()
        };
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{}\n{jetstream}\n{}\n",
                self.port, self.extra_config
            ),
        )
        .expect("write nats.conf");
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("log");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        assert!(
            eventually(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                self.port
            ))
            .is_ok()),
            "nats-server did not start: {}",
            std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
        );
    }

    /// Stops the server (its store stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Whether this server's process is running (not stopped by the test).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asks both `submitter` processes of the `pool_lab` example on node `node` to run `count`
/// tasks each (disjoint ranges, `in_flight` at once, each allowed `timeout_ms`) over the bus
/// `connect` opens, and returns
/// their summaries; `during` runs on another thread meanwhile.
pub fn ask_pool_lab_submitters(
    connect: impl FnOnce() -> oxwork::bus::Bus,
    node: &str,
    count: u64,
    in_flight: usize,
    timeout_ms: u64,
    during: impl FnOnce() + Send + 'static,
) -> Vec<Value> {
    use oxwork::bus::Headers;
    let side = std::thread::spawn(during);
    let node = node.to_string();
    let summaries = local_runtime().block_on(async move {
        let bus = connect();
        assert!(bus.wait_connected(Duration::from_secs(5)).await);
        let asks: Vec<_> = (0..2u64)
            .map(|id| {
                let b = bus.clone();
                let body = serde_json::json!({"from": id * 1_000_000, "count": count, "in_flight": in_flight, "timeout_ms": timeout_ms});
                let subject = format!("ox.w.{node}.submitter.{id}");
                tokio::task::spawn_local(async move {
                    b.request(&subject, Headers::new(), body.to_string(), Duration::from_secs(120)).await
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in asks {
            let answer = h.await.expect("join").expect("submitter answered");
            out.push(serde_json::from_slice::<Value>(&answer.payload).expect("summary json"));
        }
        out
    });
    side.join().expect("side thread");
    summaries
}

/// A JetStream cluster of `nats-server`s of the test's own on loopback (every server routes to
/// every other), each with its own store; killed and reaped on drop.
pub struct NatsCluster {
    pub servers: Vec<Nats>,
    /// Every server's client URL, comma-separated, as `--bus` takes them.
    pub urls: String,
}

impl NatsCluster {
    /// Starts `n` servers named `s0`, `s1`, ... and waits until JetStream answers (its
    /// meta-leader is elected).
    pub fn start(n: usize) -> NatsCluster {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let route_list = routes
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let servers: Vec<Nats> = (0..n)
            .map(|i| {
                Nats::start_with(&format!(
                    "server_name: s{i}\ncluster {{ name: oxc, listen: \"127.0.0.1:{}\", routes: [{route_list}] }}",
                    routes[i]
                ))
            })
            .collect();
        let urls = servers
            .iter()
            .map(|s| s.url.clone())
            .collect::<Vec<_>>()
            .join(",");
        let cluster = NatsCluster { servers, urls };
        let ready = local_runtime().block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < deadline {
                // Ready when a stream on every server can be made (and then it goes again).
                if let Ok(c) = async_nats::connect(cluster.servers[0].url.as_str()).await {
                    let js = async_nats::jetstream::new(c);
                    let probe = async_nats::jetstream::stream::Config {
                        name: "OX_TEST_READY".into(),
                        subjects: vec!["ox.test.ready".into()],
                        num_replicas: n,
                        ..Default::default()
                    };
                    if js.create_stream(probe).await.is_ok() {
                        let _ = js.delete_stream("OX_TEST_READY").await;
                        return true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        });
        assert!(
            ready,
            "the JetStream cluster did not elect a leader in 30 s; s0 logged:\n{}",
            cluster.servers[0].log()
        );
        cluster
    }

    /// The index of the server leading stream `name` (its RAFT group's leader).
    pub fn stream_leader(&self, name: &str) -> Option<usize> {
        let info = self.stream_info(name)?;
        let leader = info.cluster?.leader?;
        leader.strip_prefix('s')?.parse().ok()
    }

    /// Stream `name`'s information, asked of any live server.
    pub fn stream_info(&self, name: &str) -> Option<async_nats::jetstream::stream::Info> {
        let urls = self.live_urls();
        local_runtime().block_on(async move {
            for url in urls {
                let Ok(Ok(c)) =
                    tokio::time::timeout(Duration::from_secs(2), async_nats::connect(url)).await
                else {
                    continue;
                };
                let js = async_nats::jetstream::new(c);
                let Ok(mut s) = js.get_stream(name).await else {
                    continue;
                };
                if let Ok(info) = s.info().await {
                    return Some(info.clone());
                }
            }
            None
        })
    }

    fn live_urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .filter(|s| s.is_running())
            .map(|s| s.url.clone())
            .collect()
    }
}

/// A TCP proxy of the test's own on loopback that can be frozen: while frozen it moves no byte
/// either way and closes nothing, as a network partition does (no RST, no FIN; the peers only
/// notice by their own timeouts). Stops and joins its threads on drop.
pub struct FreezableProxy {
    pub port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl FreezableProxy {
    /// Forwards 127.0.0.1:`port` (a free one) to 127.0.0.1:`target`.
    pub fn start(target: u16) -> FreezableProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy listen");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, st) = (frozen.clone(), stop.clone());
        let acceptor = std::thread::spawn(move || {
            let mut pumps = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        for (from, to) in [
                            (client.try_clone(), server.try_clone()),
                            (server.try_clone(), client.try_clone()),
                        ] {
                            let (Ok(from), Ok(to)) = (from, to) else {
                                continue;
                            };
                            let (f, st) = (f.clone(), st.clone());
                            pumps.push(std::thread::spawn(move || pump(from, to, &f, &st)));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for p in pumps {
                let _ = p.join();
            }
        });
        FreezableProxy {
            port,
            frozen,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Holds every byte in both directions from now on.
    pub fn freeze(&self) {
        self.frozen
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Moves bytes again, the held ones first.
    pub fn heal(&self) {
        self.frozen
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    frozen: &std::sync::atomic::AtomicBool,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if frozen.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Read just as the freeze began: held until the heal.
                while frozen.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Sends `signal` (a name such as `INT`) to `pid`.
pub fn kill_with(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}
