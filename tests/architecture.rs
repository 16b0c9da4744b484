//! The architecture invariants a test can hold, read from the source tree (ARCHITECTURE.md
//! states them): which top-level folder may name which, that nothing but the backends' own
//! folders and `Bus`'s constructors names a transport's types, and that only `process/sys.rs`
//! and `os.rs` use `nix` or `unsafe`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The folders (and files) under `src/` and what each may name with `crate::...`. The layers,
/// bottom up: `error`, `os`; `protocol`; `runtime`; `http`, `websocket`; `bus`; `process`.
const MAY_USE: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("os", &["error"]),
    ("protocol", &["error"]),
    ("runtime", &["error", "os", "protocol"]),
    ("http", &["error", "os", "protocol", "runtime"]),
    ("websocket", &["error", "os", "protocol", "runtime", "http"]),
    ("bus", &["error", "os", "protocol", "runtime"]),
    (
        "process",
        &[
            "error",
            "os",
            "protocol",
            "runtime",
            "http",
            "websocket",
            "bus",
        ],
    ),
    (
        "fuzzing",
        &[
            "error",
            "os",
            "protocol",
            "runtime",
            "http",
            "websocket",
            "bus",
        ],
    ),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every source file as (path below `src/`, text without `//` comments).
fn tree() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&src)
                .expect("below src")
                .display()
                .to_string();
            let text = std::fs::read_to_string(&p).expect("read");
            let code: String = text
                .lines()
                .map(|l| match l.find("//") {
                    Some(i) => &l[..i],
                    None => l,
                })
                .collect::<Vec<_>>()
                .join("\n");
            (rel, code)
        })
        .collect()
}

fn top_of(rel: &str) -> &str {
    rel.split('/').next().unwrap_or(rel).trim_end_matches(".rs")
}

#[test]
fn each_folder_names_only_the_layers_below_it() {
    let allowed: BTreeMap<&str, &[&str]> = MAY_USE.iter().copied().collect();
    let tops: BTreeSet<&str> = allowed.keys().copied().collect();
    let mut wrong = Vec::new();
    for (rel, code) in tree() {
        let from = top_of(&rel);
        if from == "lib" {
            continue;
        }
        let may = allowed
            .get(from)
            .unwrap_or_else(|| panic!("{rel}: a top-level module ARCHITECTURE.md does not place"));
        for (i, _) in code.match_indices("crate::") {
            let to: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if to != from && tops.contains(to.as_str()) && !may.contains(&to.as_str()) {
                wrong.push(format!("{rel} names crate::{to}"));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn only_the_backends_and_the_bus_constructors_name_a_transport() {
    let mut wrong = Vec::new();
    for (rel, code) in tree() {
        let own = rel.starts_with("bus/hub/") || rel.starts_with("bus/nats/");
        if own {
            continue;
        }
        for name in ["HubLink", "NatsLink", "async_nats::", "jetstream"] {
            let allowed = rel == "bus/handle.rs" && (name == "HubLink" || name == "NatsLink")
                // The start check speaks to NATS before any Bus exists.
                || rel == "process/cluster.rs" && (name == "async_nats::" || name == "jetstream")
                || rel == "bus/config.rs" && name == "async_nats::";
            if code.contains(name) && !allowed {
                wrong.push(format!("{rel} names {name}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "past the transport contract:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn only_process_sys_and_os_use_nix_or_unsafe() {
    let mut wrong = Vec::new();
    for (rel, code) in tree() {
        if rel == "process/sys.rs" || rel == "os.rs" {
            continue;
        }
        let names_nix = code.match_indices("nix::").any(|(i, _)| {
            !code[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        });
        if names_nix {
            wrong.push(format!("{rel} uses nix"));
        }
        let has_unsafe = code
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .any(|w| w == "unsafe");
        if has_unsafe {
            wrong.push(format!("{rel} has unsafe"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
