//! The seed article's second listing, made real: a `task` group of 4 processes and an `upload`
//! group of 2. Every second each upload process picks a random task process id and sends it
//! "Upload message" (the article's `getWorkerById($id)->send(...)`); the task process prints it
//! and replies; the upload process prints the reply. As in the article, each task process also
//! opens a text listener on 127.0.0.1:5678 from its start callback (the four share it through
//! `SO_REUSEPORT`) and answers its clients the same way.
//!
//! Part two does what the article means by handing uploads to several processes: a `resize`
//! task pool of 3 processes; each upload process submits an "image" every second and prints the
//! result (the pool's figures show in `status`).
//!
//! Run: `cargo run --example seed_tasks -- start`; `SEED_TASKS_LISTEN` moves the listener.
//!
//! Across two machines (or two nodes on one), with a NATS server:
//! `seed_tasks start --bus nats://HOST:4222 --node b --group task --group resize` on one and
//! `SEED_TASK_NODE=b seed_tasks start --bus nats://HOST:4222 --node a --group upload` on the
//! other: the uploads on node a ask the task processes on node b and submit to its pool.

use std::time::Duration;

use oxwork::bus::{self, Task, WorkerAddr};
use oxwork::{run_all, Timer, Worker};

const TASK_WORKERS: u32 = 4;
const UPLOAD_WORKERS: u32 = 2;

fn main() -> oxwork::Result<()> {
    let listen =
        std::env::var("SEED_TASKS_LISTEN").unwrap_or_else(|_| "text://127.0.0.1:5678".into());

    let mut task = Worker::without_address();
    task.name("task").count(TASK_WORKERS);
    task.on_worker_start(move |w| {
        let id = w.id();
        // The article opens this listener inside each task process's start callback.
        match Worker::new(&listen) {
            Ok(mut clients) => {
                clients.name("task-listener");
                clients.on_message(move |c, data| {
                    println!("TaskWorker {id} received upload message: {data}");
                    c.send(format!("TaskWorker {id} received upload message: {data}"));
                });
                if let Err(e) = clients.listen() {
                    eprintln!("TaskWorker {id} cannot listen on {listen}: {e}");
                }
            }
            Err(e) => eprintln!("bad listen address: {e}"),
        }
        println!("TaskWorker {id} started");
    });
    task.on_worker_message(|w, msg| {
        let line = format!(
            "TaskWorker {} received upload message: {}",
            w.id(),
            msg.text()
        );
        println!("{line}");
        if let Err(e) = msg.reply(line) {
            eprintln!("reply failed: {e}");
        }
    });

    let mut resize = Worker::without_address();
    resize.name("resize").count(3).task_concurrency(4);
    resize.on_task(|t: Task| -> Result<String, String> {
        let image = t.text();
        Ok(format!(
            "thumbnail of {image} made by pid {}",
            std::process::id()
        ))
    });

    // Across machines (`--bus nats://...`), the task group may run on another node: name it.
    let task_node = std::env::var("SEED_TASK_NODE").ok();

    let mut upload = Worker::without_address();
    upload.name("upload").count(UPLOAD_WORKERS);
    upload.on_worker_start(move |w| {
        let task_node = task_node.clone();
        let me = w.id();
        let mut n = 0u64;
        // Random ids, dealt from a shuffled deck so that every task process gets its turn.
        let mut deck: Vec<u32> = Vec::new();
        Timer::add(1, true, move || {
            n += 1;
            if deck.is_empty() {
                deck = (0..TASK_WORKERS).collect();
                fastrand::shuffle(&mut deck);
            }
            let task_id = deck.pop().unwrap_or(0);
            let target = match &task_node {
                Some(node) => WorkerAddr::new(node, "task", task_id),
                None => WorkerAddr::local("task", task_id),
            };
            oxwork::spawn(async move {
                match bus::ask(&target, "Upload message", Duration::from_secs(2)).await {
                    Ok(reply) => println!("UploadWorker {me} got reply: {}", reply.text()),
                    Err(e) => eprintln!("UploadWorker {me}: task {task_id} did not answer: {e}"),
                }
                match bus::submit("resize", format!("image-{me}-{n}.jpg")).await {
                    Ok(result) => println!(
                        "UploadWorker {me} resized: {}",
                        String::from_utf8_lossy(&result)
                    ),
                    Err(e) => eprintln!("UploadWorker {me}: resize failed: {e}"),
                }
            });
        });
        println!("UploadWorker {me} started");
    });
    run_all()
}
