//! `status` and `connections` show the real processes and connections.

mod support;

use support::*;

#[test]
fn status_reports_live_processes_with_their_counters() {
    let s = echo(2, &[]);
    let mut c = LineClient::connect(s.port).expect("connect");
    let pid: u64 = c.ask("pid").expect("pid").parse().expect("n");
    for i in 0..9 {
        c.ask(&format!("m{i}")).expect("reply");
    }
    let st = s.status();
    assert_eq!(st["master_pid"].as_u64(), Some(u64::from(s.master_pid())));
    let procs = st["processes"].as_array().expect("array");
    assert_eq!(procs.len(), 2);
    for p in procs {
        assert!(alive(p["pid"].as_u64().expect("pid") as u32));
        assert!(p["memory_bytes"].as_u64().expect("mem") > 0);
        assert_eq!(p["listen"], format!("text://127.0.0.1:{}", s.port));
        assert_eq!(p["worker"], "echo");
        assert!(p["stats"]["timers"].as_u64().expect("timers") >= 1);
    }
    let mine = procs
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("serving process listed");
    assert_eq!(mine["stats"]["messages"], 10);
    assert_eq!(mine["stats"]["connections"], 1);

    let text = s.run(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("PROCESSES") && text.contains(&pid.to_string()),
        "{text}"
    );
}

#[test]
fn connections_lists_each_open_connection_with_its_peer_and_bytes() {
    let s = echo(2, &[]);
    let mut clients: Vec<LineClient> = (0..3)
        .map(|_| LineClient::connect(s.port).expect("connect"))
        .collect();
    for c in &mut clients {
        c.ask("hello").expect("reply");
    }
    let rows = s.connections();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for c in &mut clients {
        let me = c.raw().local_addr().expect("addr").to_string();
        let row = rows
            .iter()
            .find(|r| r["peer"] == me)
            .unwrap_or_else(|| panic!("{me} not listed"));
        assert_eq!(row["bytes_in"], 6);
        assert_eq!(row["bytes_out"], 6);
        assert!(alive(row["pid"].as_u64().expect("pid") as u32));
    }
    let text = s.run(&["connections"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("3 connections"));
}

#[test]
fn a_process_stuck_in_a_callback_shows_as_busy() {
    let s = echo(1, &[]);
    let mut c = LineClient::connect(s.port).expect("connect");
    c.send("block:2500").expect("send");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let st = s.status();
    assert_eq!(st["processes"][0]["busy"], true, "{st}");
    assert_eq!(c.recv().expect("reply"), "unblocked");
    assert_eq!(s.status()["processes"][0]["busy"], false);
}
