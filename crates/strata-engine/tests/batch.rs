//! `Port::process_batch` (the pipelined path: bucket and entry prefetches,
//! candidate hints, key checks) gives exactly what `Port::process` gives frame by
//! frame — verdicts, output bytes, counters — including when earlier frames
//! of a chunk create or evict the flows later frames' hints point at, and
//! when a frame does not parse.

mod common;
use common::*;
use strata_engine::scenario::*;
use strata_engine::{Direction, Port, PortConfig, Verdict, secs};
use strata_packet::PacketBuf;

/// Runs of one direction: SYNs of ten connections then their third
/// packets (so a chunk holds a flow's creation and a packet that needs
/// it), the replies, and the closing packets; a truncated frame in each
/// outbound run.
fn runs(connections: u32) -> Vec<(Direction, Vec<Vec<u8>>)> {
    let mut runs = Vec::new();
    let all: Vec<_> = (0..connections).map(lifecycle).collect();
    for group in all.chunks(10) {
        let pick = |k: usize| group.iter().map(move |l| l[k].1.clone());
        let mut out: Vec<Vec<u8>> = pick(0).chain(pick(2)).collect();
        out.insert(7, out[3][..20].to_vec());
        runs.push((Direction::Out, out));
        runs.push((Direction::In, pick(1).collect()));
        runs.push((Direction::Out, pick(3).chain(pick(5)).collect()));
        runs.push((Direction::In, pick(4).collect()));
    }
    runs
}

fn port(max_connections: usize) -> Port {
    let cfg = PortConfig {
        max_connections,
        ..PortConfig::default()
    };
    let mut p = four_layer_port_with(cfg, 0, true).expect("port");
    install_mappings(&mut p, 4).expect("mappings");
    p
}

fn same_as_one_by_one(max_connections: usize, connections: u32) -> Port {
    same_runs_as_one_by_one(max_connections, runs(connections))
}

fn same_runs_as_one_by_one(max_connections: usize, runs: Vec<(Direction, Vec<Vec<u8>>)>) -> Port {
    let (mut one, mut batched) = (port(max_connections), port(max_connections));
    let mut forwarded = 0;
    for (d, frames) in runs {
        let mut bufs: Vec<PacketBuf> = frames.iter().map(|f| PacketBuf::from_frame(f)).collect();
        let mut verdicts = vec![Verdict::Forward; bufs.len()];
        batched.process_batch(d, &mut bufs, secs(1), &mut verdicts);
        for (i, f) in frames.iter().enumerate() {
            let (v, bytes) = run(&mut one, d, f, secs(1));
            assert_eq!(verdicts[i], v, "{d:?} frame {i}");
            if v.is_forward() {
                forwarded += 1;
                assert_eq!(bufs[i].as_slice(), &bytes[..], "{d:?} frame {i}");
            }
        }
    }
    assert!(forwarded > 0);
    for d in [Direction::Out, Direction::In] {
        assert_eq!(batched.direction_counters(d), one.direction_counters(d));
    }
    assert_eq!(batched.counters().flows, one.counters().flows);
    batched
        .verify_flow_state()
        .expect("batched port's flow state");
    assert!(batched.direction_counters(Direction::Out).fast_path > 0);
    batched
}

#[test]
fn batches_match_frame_by_frame() {
    let p = same_as_one_by_one(1 << 16, 200);
    assert_eq!(
        p.counters().drops[strata_engine::DropReason::Malformed.index()],
        20
    );
}

/// With room for a few connections, chunks evict and reuse slots that
/// later frames' candidates name: each candidate is key-checked.
#[test]
fn batches_match_frame_by_frame_under_eviction() {
    let p = same_as_one_by_one(8, 120);
    let f = p.counters().flows;
    assert!(f.evicted_half_open + f.evicted_established > 0, "{f:?}");
}

/// Calls of every length around the pipeline's sizes: shorter than its
/// lookahead (1–3 frames), exactly a chunk (32), and several chunks with a
/// partial last one (75), the frames of one call mixing new connections'
/// first packets with packets of flows made earlier in the same call.
#[test]
fn batches_of_every_size_around_the_chunk_and_lookahead() {
    let all: Vec<_> = (0..120).map(lifecycle).collect();
    let mut runs = Vec::new();
    let mut next = 0;
    for len in [1usize, 2, 3, 32, 75] {
        let group = &all[next..next + len];
        next += len;
        // SYN then, further on, the same connection's ACK: both in one call.
        let mut out: Vec<Vec<u8>> = group.iter().map(|l| l[0].1.clone()).collect();
        out.extend(group.iter().map(|l| l[2].1.clone()));
        runs.push((Direction::Out, out));
        runs.push((
            Direction::In,
            group.iter().map(|l| l[1].1.clone()).collect(),
        ));
        runs.push((
            Direction::Out,
            group.iter().map(|l| l[2].1.clone()).collect(),
        ));
    }
    let p = same_runs_as_one_by_one(1 << 16, runs);
    assert_eq!(p.connection_count(), 113);
}
