//! `status` and `connections` show the real processes and connections.

mod support;

use std::time::Duration;

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

#[test]
fn status_d_redraws_the_table_every_second_with_the_message_rate_and_stops_on_ctrl_c() {
    use std::io::Read;
    let s = echo(1, &[]);
    let mut c = LineClient::connect(s.port).expect("connect");
    let mut live = s
        .command(&["status", "-d"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("status -d");
    let mut out = live.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = out.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    });
    // Messages flow while it draws: 50 a second for about 3.5 s.
    let until = std::time::Instant::now() + Duration::from_millis(3500);
    while std::time::Instant::now() < until {
        c.ask("tick").expect("reply");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_with("INT", live.id());
    let status = live.wait().expect("status -d ends");
    let text = reader.join().expect("output");
    assert!(status.success(), "{status:?}\n{text}");
    let frames: Vec<&str> = text.split("\x1b[H\x1b[2J").skip(1).collect();
    assert!(frames.len() >= 3, "{} frames:\n{text}", frames.len());
    assert!(frames[0].contains("PROCESSES") && frames[0].contains("msg/s"));
    // The started line is a date, not a number of seconds.
    assert!(frames[0].contains(" GMT"), "{}", frames[0]);
    // The last frames show the echo process's rate: some tens of messages a second.
    let rate: u64 = frames
        .last()
        .and_then(|f| f.lines().find(|l| l.contains("echo#0")))
        .and_then(|l| l.split_whitespace().nth(7))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!((10..200).contains(&rate), "rate {rate}:\n{text}");
}

#[test]
fn ps_tells_the_processes_apart_by_their_titles() {
    let s = echo(2, &[]);
    let titles: Vec<String> = s
        .group_pids("echo")
        .iter()
        .map(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or(&[])).into_owned()
                })
                .unwrap_or_default()
        })
        .collect();
    let mut titles = titles;
    titles.sort();
    let listen = format!("text://127.0.0.1:{}", s.port);
    assert_eq!(
        titles,
        [
            format!("echo: worker echo 0 {listen}"),
            format!("echo: worker echo 1 {listen}")
        ]
    );
}
