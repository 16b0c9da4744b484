//! examples/handoff_lab.rs answering `v2`: the "new release" that the hand-off tests swap in
//! between two reloads.

/// The version this build answers with.
const VERSION: &str = "v2";

include!("shared/handoff_lab.rs");
