//! Started by systemd with `Type=notify`: the master says READY=1 once its processes run, and
//! STOPPING=1 when told to stop, on the socket `NOTIFY_SOCKET` names.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use support::*;

fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn the_master_tells_systemd_it_is_ready_and_when_it_stops() {
    let dir = private_tempdir();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut s = echo(2, &[("NOTIFY_SOCKET", path.display().to_string())]);
    let ready = next(&socket);
    assert_eq!(
        ready,
        format!("READY=1\nMAINPID={}", s.master_pid()),
        "{ready}"
    );
    // Ready means serving.
    let mut c = LineClient::connect(s.port).expect("connect");
    assert!(c.ask("hello").is_ok());
    let out = s.run(&["stop"]);
    assert!(out.status.success());
    assert_eq!(
        next(&socket),
        format!("STOPPING=1\nMAINPID={}", s.master_pid())
    );
    assert!(s.wait_exit(Duration::from_secs(10)));
}
