//! Writes the snapshot of `snapshot_scenario` (the four-layer port with
//! established connections, see `tests/common/mod.rs`; with `INBOUND=1`,
//! `snapshot_scenario_with_inbound`) to the file named by `OUT`. Run by the release whose format a fixture in `tests/data/`
//! keeps, so later builds are tested against bytes an older build wrote:
//!
//! ```text
//! OUT=crates/strata-engine/tests/data/four-layer-v6.snap \
//!     cargo run --release -p strata-engine --example snapshot_fixture
//! ```
//!
//! (`four-layer-v7-inbound.snap`: `INBOUND=1`, at commit 3e6efff;
//! `four-layer-v8-inbound.snap`: `INBOUND=1`, at commit 70e4641;
//! `four-layer-v9-inbound.snap`: `INBOUND=1`, at commit 7fa6927.)

#[path = "../tests/common/mod.rs"]
mod common;

fn main() {
    let Ok(out) = std::env::var("OUT") else {
        eprintln!("set OUT to the file to write");
        std::process::exit(2);
    };
    let (port, _) = if std::env::var_os("INBOUND").is_some() {
        common::snapshot_scenario_with_inbound()
    } else {
        common::snapshot_scenario()
    };
    let bytes = port.snapshot().expect("snapshot");
    std::fs::write(&out, &bytes).expect("write");
    println!(
        "{out}: {} bytes, {} connections",
        bytes.len(),
        port.connection_count()
    );
}
