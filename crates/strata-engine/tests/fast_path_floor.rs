//! The fast-path bench's floor (`benches/floor`) stays a floor of the same
//! work: for established SNAT + VXLAN connections its output is the
//! engine's, byte for byte, and it sends a connection-changing packet (a
//! FIN) and a packet of an unknown connection to its slow path instead of
//! forwarding them. (The bench asserts the first on its own frames before
//! timing; CI builds benches without running them, so this test keeps the
//! floor honest.)

#[path = "../benches/floor/mod.rs"]
mod floor;

#[path = "common/mod.rs"]
mod common;
use common::*;
use strata_engine::scenario::{four_layer_port_with, install_mappings};
use strata_engine::{Direction, PortConfig, Verdict, secs};
use strata_packet::PacketBuf;

const STRIDE: usize = 256;

#[test]
fn floor_output_is_the_engines() {
    let mut port = four_layer_port_with(PortConfig::default(), 0, true).expect("port");
    install_mappings(&mut port, 4).expect("mappings");
    let n = 200usize;
    let frames: Vec<Vec<u8>> = (0..n as u32)
        .map(|i| {
            let [(_, out), _] = nat_conn(&mut port, i);
            out
        })
        .collect();
    let mut ring = vec![0u8; (n + 2) * STRIDE];
    for (i, f) in frames.iter().enumerate() {
        ring[i * STRIDE..i * STRIDE + f.len()].copy_from_slice(f);
    }
    let mut buf = PacketBuf::with_capacity(2048);
    let outs: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            buf.reset(f);
            assert_eq!(
                port.process(Direction::Out, &mut buf, secs(2)),
                Verdict::Forward
            );
            buf.as_slice().to_vec()
        })
        .collect();
    let mut fl = floor::Floor::new(1024, &outs[0]);
    for (f, o) in frames.iter().zip(&outs) {
        fl.add_flow(f, o);
    }
    for i in 0..300 {
        fl.add_other(i);
    }

    // Two unusual frames at the end of the ring: connection 0's FIN, and a
    // connection the floor does not hold.
    let fin = vm_tcp(
        std::net::Ipv4Addr::new(93, 184, 0, 0),
        20000,
        443,
        FIN | ACK,
        66,
        10,
        b"",
    );
    let unknown = vm_tcp(
        std::net::Ipv4Addr::new(93, 184, 9, 9),
        999,
        443,
        ACK,
        2,
        10,
        &PAYLOAD,
    );
    let mut odd = Vec::new();
    for (k, f) in [fin, unknown].iter().enumerate() {
        let at = (n + k) * STRIDE;
        ring[at..at + f.len()].copy_from_slice(f);
        odd.push((at, f.len()));
    }
    let mut bufs: Vec<floor::Buf> = (0..32).map(|_| floor::Buf::new()).collect();
    let mut fwd = [false; 32];
    for first in (0..n).step_by(32) {
        let k = (n - first).min(32);
        let frames_at = (first..first + k).map(|i| (i * STRIDE, frames[i].len()));
        fl.batch(&mut bufs[..k], frames_at, &ring, &mut fwd[..k]);
        for j in 0..k {
            assert!(fwd[j], "frame {} forwarded", first + j);
            assert_eq!(
                bufs[j].as_slice(),
                &outs[first + j][..],
                "frame {}",
                first + j
            );
        }
    }
    assert_eq!(fl.slow, 0);
    // Each measured frame is a retransmission the second time round (the
    // bench replays the same frames): counted, as by the engine.
    let frames_at = (0..32).map(|i| (i * STRIDE, frames[i].len()));
    fl.batch(&mut bufs, frames_at, &ring, &mut fwd);
    assert_eq!(fl.retransmits, 32);

    fl.batch(&mut bufs[..2], odd.into_iter(), &ring, &mut fwd[..2]);
    assert_eq!(fwd[..2], [false, false]);
    assert_eq!(fl.slow, 2);
}
