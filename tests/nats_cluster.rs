//! Several nodes of one program on one machine, joined by a real `nats-server` the test starts:
//! roles split with `--group`, asks and task submissions across nodes, client routing across
//! nodes, the cluster view, and the clear errors of a bad bus configuration at start.

mod support;

use std::time::Duration;

use support::*;

/// A node of `example` on the NATS bus at `nats`, named `node`, running `groups` only.
fn node(
    example: &str,
    nats: &Nats,
    node: &str,
    groups: &[&str],
    env: &[(&str, String)],
    expected: usize,
) -> Server {
    let mut args = Vec::new();
    for g in groups {
        args.extend(["--group", g]);
    }
    let mut all = vec![
        ("OXWORK_BUS", nats.url.clone()),
        ("OXWORK_NODE", node.to_string()),
    ];
    all.extend(env.iter().cloned());
    Server::start_with_args(example, &args, &all, expected)
}

#[test]
fn seed_tasks_split_across_two_nodes_asks_and_submits_across_them() {
    let nats = Nats::start();
    let listen = (
        "SEED_TASKS_LISTEN",
        format!("text://127.0.0.1:{}", free_port()),
    );
    let workers = node("seed_tasks", &nats, "b", &["task", "resize"], &[listen], 7);
    let uploads = node(
        "seed_tasks",
        &nats,
        "a",
        &["upload"],
        &[("SEED_TASK_NODE", "b".to_string())],
        2,
    );
    assert!(
        eventually(SETTLE, || {
            let out = uploads.stdout();
            out.contains("got reply: TaskWorker") && out.contains("resized: thumbnail of image-")
        }),
        "node a's uploads got no answers from node b; a's stderr:\n{}\nb's stderr:\n{}",
        uploads.stderr(),
        workers.stderr()
    );
    assert!(workers
        .stdout()
        .contains("received upload message: Upload message"));
    let st = uploads.status();
    assert_eq!(st["node"], "a");
    assert!(
        st["bus"]["backend"]
            .as_str()
            .is_some_and(|b| b.starts_with("nats")),
        "{st}"
    );
    assert_eq!(st["bus"]["connected"], true);
    let groups: Vec<_> = st["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| p["worker"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(groups.iter().all(|g| g == "upload"), "{groups:?}");
}

#[test]
fn the_cluster_view_lists_every_node_with_its_groups_from_any_node() {
    let nats = Nats::start();
    let listen = (
        "SEED_TASKS_LISTEN",
        format!("text://127.0.0.1:{}", free_port()),
    );
    let b = node("seed_tasks", &nats, "b", &["task", "resize"], &[listen], 7);
    let a = node("seed_tasks", &nats, "a", &["upload"], &[], 2);
    for s in [&a, &b] {
        let nodes = cluster_json(s);
        let summary: Vec<(String, Vec<(String, u64)>)> = nodes
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| {
                let groups = n["groups"]
                    .as_array()
                    .expect("groups")
                    .iter()
                    .map(|g| {
                        (
                            g["name"].as_str().unwrap_or("").to_string(),
                            g["processes"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect();
                (n["node"].as_str().unwrap_or("").to_string(), groups)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a".to_string(), vec![("upload".to_string(), 2)]),
                (
                    "b".to_string(),
                    vec![("resize".to_string(), 3), ("task".to_string(), 4)]
                ),
            ]
        );
    }
    let table = a.run(&["cluster"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("2 nodes, 9 worker processes"));
}

/// `cluster --json` run on `s`.
fn cluster_json(s: &Server) -> serde_json::Value {
    let out = s.run(&["cluster", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `cluster --json` run on `s`, as (node, reachable) pairs in the order listed.
fn census_of(s: &Server) -> Vec<(String, bool)> {
    cluster_json(s)
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or("").to_string(),
                n["reachable"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn a_node_that_does_not_answer_is_listed_as_unreachable_and_a_stopped_one_is_gone() {
    let nats = Nats::start();
    let echo_node = |name: &str| {
        let env = [
            ("ECHO_LISTEN", format!("text://127.0.0.1:{}", free_port())),
            ("ECHO_COUNT", "1".to_string()),
        ];
        node("echo", &nats, name, &[], &env, 1)
    };
    let a = echo_node("a");
    let mut b = echo_node("b");
    let yes = |n: &str| (n.to_string(), true);
    assert_eq!(census_of(&a), [yes("a"), yes("b")]);
    // A frozen master is alive and registered but silent: what a node cut off looks like.
    signal(b.master_pid(), "STOP");
    let frozen = census_of(&a);
    let table = String::from_utf8_lossy(&a.run(&["cluster"]).stdout).to_string();
    signal(b.master_pid(), "CONT");
    assert_eq!(frozen, [yes("a"), ("b".to_string(), false)]);
    assert!(
        table.contains("UNREACHABLE")
            && table.contains("2 nodes, 1 worker processes, 1 unreachable"),
        "{table}"
    );
    assert!(eventually(SETTLE, || census_of(&a) == [yes("a"), yes("b")]));
    assert!(b.run(&["stop"]).status.success());
    assert!(b.wait_exit(Duration::from_secs(20)), "node b did not stop");
    assert_eq!(census_of(&a), [yes("a")], "a stopped node is still listed");
}

#[test]
fn a_client_on_node_a_gets_what_node_b_sends_to_its_uid_group_and_channels() {
    let nats = Nats::start();
    let gateway = |name: &str| {
        let port = free_port();
        let env = [
            ("ECHO_LISTEN", format!("text://127.0.0.1:{port}")),
            ("ECHO_COUNT", "1".to_string()),
            ("ECHO_GATEWAY", "1".to_string()),
        ];
        let mut s = node("echo", &nats, name, &[], &env, 1);
        s.port = port;
        s
    };
    let (a, b) = (gateway("a"), gateway("b"));
    let mut alice = LineClient::connect(a.port).expect("connect a");
    let mut bob = LineClient::connect(b.port).expect("connect b");
    let alice_id = alice.ask("id").expect("id");
    assert_eq!(alice.ask("bind:alice").expect("bind"), "ok");
    assert_eq!(alice.ask("join:room").expect("join"), "ok");
    assert!(
        eventually(SETTLE, || bob.ask("group-count:room").expect("count")
            == "1"),
        "node b never saw node a's group member"
    );
    assert_eq!(bob.ask("uid-online:alice").expect("online"), "true");
    assert_eq!(bob.ask("to-uid:alice:for alice").expect("sent"), "sent");
    assert_eq!(alice.recv().expect("by uid"), "for alice");
    assert_eq!(bob.ask("to-group:room:for the room").expect("sent"), "sent");
    assert_eq!(alice.recv().expect("by group"), "for the room");
    assert_eq!(
        bob.ask(&format!("to-client:{alice_id}:by id"))
            .expect("sent"),
        "sent"
    );
    assert_eq!(alice.recv().expect("by id"), "by id");
    assert_eq!(
        bob.ask("count").expect("count"),
        "2",
        "one client on each node"
    );
}

/// `start` with `bus` must fail at once with one line that says why.
fn start_fails_clearly(bus: &str, env: &[(&str, String)], expect: &str) {
    let dir = private_tempdir();
    let out = std::process::Command::new(example_bin("echo"))
        .args(["start", "--bus", bus, "--node", "bad"])
        .env("OXWORK_RUN_DIR", dir.path())
        .env("ECHO_LISTEN", format!("text://127.0.0.1:{}", free_port()))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run start");
    assert!(!out.status.success(), "start succeeded with bus {bus}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line:\n{stderr}");
    assert!(lines[0].contains(expect), "{:?} lacks {expect:?}", lines[0]);
}

#[test]
fn a_wrong_url_wrong_credentials_or_an_unreachable_server_each_fail_start_with_one_line() {
    start_fails_clearly("redis://127.0.0.1:6379", &[], "not a NATS URL");
    start_fails_clearly("nats://127.0.0.1:99999", &[], "invalid port");
    let closed = free_port();
    start_fails_clearly(
        &format!("nats://127.0.0.1:{closed}"),
        &[],
        "Connection refused",
    );
    // A port that accepts but never speaks NATS: no answer in time.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    start_fails_clearly(
        &format!("nats://127.0.0.1:{silent_port}"),
        &[],
        "cannot use the NATS bus",
    );
    drop(silent);
    let secured = Nats::start_with("authorization { user: oxwork, password: right }");
    let wrong = secured.url.replace("nats://", "nats://oxwork:wrong@");
    start_fails_clearly(&wrong, &[], "refused our credentials");
    start_fails_clearly(
        &secured.url,
        &[
            ("OXWORK_BUS_USER", "oxwork".into()),
            ("OXWORK_BUS_PASSWORD", "nope".into()),
        ],
        "refused our credentials",
    );
}

#[test]
fn right_credentials_from_the_environment_are_used_by_every_process() {
    let nats = Nats::start_with("authorization { token: s3cret-token }");
    let port = free_port();
    let env = [
        ("ECHO_LISTEN", format!("text://127.0.0.1:{port}")),
        ("ECHO_COUNT", "2".to_string()),
        ("ECHO_GATEWAY", "1".to_string()),
        ("OXWORK_BUS_TOKEN", "s3cret-token".to_string()),
    ];
    let s = node("echo", &nats, "tok", &[], &env, 2);
    let mut c = LineClient::connect(port).expect("connect");
    assert_eq!(c.ask("join:g").expect("join"), "ok");
    assert!(eventually(SETTLE, || c
        .ask("group-count:g")
        .expect("count")
        == "1"));
    let st = s.status();
    assert_eq!(st["bus"]["connected"], true, "{st}");
    assert!(
        !st.to_string().contains("s3cret"),
        "the token leaked into status"
    );
}

/// A tree of one echo gateway on `nats` with `env`; proves its bus works by a group count.
fn gateway_works_with(nats: &Nats, env: &[(&str, String)]) {
    let port = free_port();
    let mut all = vec![
        ("ECHO_LISTEN", format!("text://127.0.0.1:{port}")),
        ("ECHO_COUNT", "1".to_string()),
        ("ECHO_GATEWAY", "1".to_string()),
    ];
    all.extend(env.iter().cloned());
    let s = node("echo", nats, "secure", &[], &all, 1);
    let mut c = LineClient::connect(port).expect("connect");
    assert_eq!(c.ask("join:g").expect("join"), "ok");
    assert!(
        eventually(SETTLE, || c.ask("group-count:g").expect("count") == "1"),
        "the bus does not work; stderr:\n{}",
        s.stderr()
    );
    assert_eq!(s.status()["bus"]["connected"], true);
}

#[test]
fn an_nkey_seed_from_the_environment_authenticates_every_process() {
    let user = nkeys::KeyPair::new_user();
    let config = format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}",
        user.public_key()
    );
    let nats = Nats::start_with(&config);
    let seed = user.seed().expect("seed");
    gateway_works_with(&nats, &[("OXWORK_BUS_NKEY", seed)]);
    let other = nkeys::KeyPair::new_user().seed().expect("seed");
    start_fails_clearly(
        &nats.url,
        &[("OXWORK_BUS_NKEY", other)],
        "refused our credentials",
    );
}

#[test]
fn tls_to_nats_with_a_private_authority() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("cert");
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write");
    let config = format!(
        "tls {{ cert_file: {:?}, key_file: {:?} }}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let mut nats = Nats::start_with(&config);
    nats.url = nats.url.replace("nats://", "tls://");
    gateway_works_with(&nats, &[("OXWORK_BUS_CA", cert.display().to_string())]);
    start_fails_clearly(&nats.url, &[], "TLS");
}

/// Stops a daemonised node by name when dropped, and kills its master if that fails.
struct DaemonNode {
    name: String,
    master: Option<u32>,
}

impl DaemonNode {
    fn command(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(example_bin("echo"))
            .args(args)
            .args(["--node", &self.name])
            .env_remove("OXWORK_RUN_DIR")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run echo")
    }
}

impl Drop for DaemonNode {
    fn drop(&mut self) {
        let _ = self.command(&["stop"]);
        if let Some(pid) = self.master.filter(|p| alive(*p)) {
            kill9(pid);
        }
    }
}

#[test]
fn two_nodes_of_one_program_on_one_machine_get_their_own_run_directories() {
    let nats = Nats::start();
    let tag = std::process::id();
    let mut nodes = Vec::new();
    for n in 0..2 {
        let mut node = DaemonNode {
            name: format!("side{tag}n{n}"),
            master: None,
        };
        let out = std::process::Command::new(example_bin("echo"))
            .args(["start", "-d", "--bus", &nats.url, "--node", &node.name])
            .env_remove("OXWORK_RUN_DIR")
            .env("ECHO_LISTEN", format!("text://127.0.0.1:{}", free_port()))
            .env("ECHO_COUNT", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("start");
        assert!(
            out.status.success(),
            "node {n} did not start beside the other: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st: serde_json::Value =
            serde_json::from_slice(&node.command(&["status", "--json"]).stdout).expect("status");
        assert_eq!(st["node"], node.name.as_str());
        node.master = st["master_pid"].as_u64().map(|p| p as u32);
        nodes.push(node);
    }
    assert_ne!(nodes[0].master, nodes[1].master);
    let listed = nodes[0].command(&["cluster", "--json"]);
    let cluster: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("cluster");
    let names: Vec<_> = cluster
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert_eq!(names, [nodes[0].name.as_str(), nodes[1].name.as_str()]);
    let stopped = nodes[1].command(&["stop"]);
    assert!(stopped.status.success());
    let still: serde_json::Value =
        serde_json::from_slice(&nodes[0].command(&["status", "--json"]).stdout).expect("status");
    assert_eq!(
        still["node"],
        nodes[0].name.as_str(),
        "stopping one node left the other"
    );
}

/// A signed NATS JWT (decentralised auth) with `claims`, issued by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, mut claims: serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    claims["iat"] = now.into();
    claims["iss"] = issuer.public_key().into();
    claims["jti"] = format!("T{now}{}", fastrand::u64(..)).into();
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = b64.encode(serde_json::to_vec(&claims).expect("claims"));
    let signed = format!("{header}.{body}");
    let sig = issuer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", b64.encode(sig))
}

#[test]
fn a_credentials_file_authenticates_every_process() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let limits = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
    });
    let operator_jwt = nats_jwt(
        &operator,
        serde_json::json!({"name": "op", "sub": operator.public_key(),
            "nats": {"type": "operator", "version": 2}}),
    );
    let account_jwt = nats_jwt(
        &operator,
        serde_json::json!({"name": "acc", "sub": account.public_key(),
            "nats": {"limits": limits, "default_permissions": {"pub": {}, "sub": {}},
                     "type": "account", "version": 2}}),
    );
    let user_jwt = nats_jwt(
        &account,
        serde_json::json!({"name": "u", "sub": user.public_key(),
            "nats": {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                     "type": "user", "version": 2}}),
    );
    // JetStream under an operator needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = nats_jwt(
        &operator,
        serde_json::json!({"name": "SYS", "sub": system.public_key(),
            "nats": {"type": "account", "version": 2}}),
    );
    let config = format!(
        "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{ {acc}: {account_jwt}, {sys}: {system_jwt} }}",
        acc = account.public_key(),
        sys = system.public_key(),
    );
    let nats = Nats::start_with(&config);
    let dir = tempfile::tempdir().expect("tmp");
    let creds = dir.path().join("user.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().expect("seed")
        ),
    )
    .expect("write creds");
    gateway_works_with(&nats, &[("OXWORK_BUS_CREDS", creds.display().to_string())]);
    start_fails_clearly(&nats.url, &[], "refused our credentials");
}

#[test]
fn a_node_with_task_pools_refuses_to_start_on_a_server_without_jetstream() {
    let core = Nats::start_core_only();
    let dir = private_tempdir();
    let out = std::process::Command::new(example_bin("pool_lab"))
        .args([
            "start", "--bus", &core.url, "--node", "nojs", "--group", "square",
        ])
        .env("OXWORK_RUN_DIR", dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run start");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("need JetStream"), "{stderr}");
    // Without pools, core NATS is all a node needs.
    gateway_works_with(&core, &[]);
}
