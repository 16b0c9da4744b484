//! The seed's second listing: upload processes message random task processes by id, task
//! processes answer, and everything also works over the listener each task process opens.

mod support;

use std::collections::BTreeSet;

use support::*;

#[test]
fn uploads_reach_several_task_ids_and_replies_come_back_and_port_answers() {
    let port = free_port();
    let s = Server::start(
        "seed_tasks",
        &[("SEED_TASKS_LISTEN", format!("text://127.0.0.1:{port}"))],
        10,
    );
    let reached = || -> BTreeSet<String> {
        s.stdout()
            .lines()
            .filter_map(|l| l.strip_prefix("TaskWorker "))
            .filter(|l| l.ends_with("received upload message: Upload message"))
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect()
    };
    assert!(
        eventually(SETTLE, || reached().len() >= 3),
        "task ids reached within 3 s: {:?}\n{}",
        reached(),
        s.stdout()
    );
    let out = s.stdout();
    assert!(
        out.contains("UploadWorker 0 got reply: TaskWorker"),
        "{out}"
    );
    assert!(
        out.contains("UploadWorker 1 got reply: TaskWorker"),
        "{out}"
    );
    assert!(eventually(SETTLE, || s
        .stdout()
        .contains("resized: thumbnail of image-")));

    let mut c = LineClient::connect(port).expect("port 5678 equivalent answers");
    let reply = c.ask("hello from a client").expect("reply");
    assert!(
        reply.starts_with("TaskWorker ")
            && reply.ends_with("received upload message: hello from a client"),
        "{reply}"
    );
    let st = s.status();
    let resize = st["hub"]["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "resize").cloned())
        .expect("resize pool in status");
    assert!(resize["done"].as_u64().expect("done") >= 1);
    assert_eq!(resize["consumers"], 3);
}
