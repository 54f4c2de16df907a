//! CPU per packet of the relay's SRTP transform (podpbx_media::srtp), in place on a 172-byte
//! RTP packet (160 bytes of G.711, as the relay bench sends): protect, unprotect, and the two
//! together (what a relay leg does per packet in each direction), against a plain copy of the
//! packet (the floor). `cargo bench -p podpbx-benches --bench srtp`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use podpbx_media::srtp::{Context, MasterKey, Suite};

fn packet(seq: u16) -> [u8; 2048] {
    let mut b = [0u8; 2048];
    b[0] = 0x80;
    b[2..4].copy_from_slice(&seq.to_be_bytes());
    b[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    for (i, x) in b[12..172].iter_mut().enumerate() {
        *x = i as u8;
    }
    b
}

fn bench(c: &mut Criterion) {
    let key = MasterKey::from_bytes(&[7u8; 30]);
    let mut g = c.benchmark_group("srtp_172B");
    g.throughput(Throughput::Elements(1));
    for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
        let mut tx = Context::new(suite, &key);
        let mut seq = 0u16;
        let mut buf = packet(0);
        g.bench_function(format!("protect {}", suite.name()), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                buf[2..4].copy_from_slice(&seq.to_be_bytes());
                black_box(tx.protect_rtp(&mut buf, 172).unwrap())
            })
        });
        // Protect then unprotect with a fresh sequence number each time (the replay window
        // accepts every packet once).
        let mut tx = Context::new(suite, &key);
        let mut rx = Context::new(suite, &key);
        let mut seq = 0u16;
        g.bench_function(format!("protect+unprotect {}", suite.name()), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                let mut p = packet(seq);
                let n = tx.protect_rtp(&mut p, 172).unwrap();
                black_box(rx.unprotect_rtp(&mut p[..n]).unwrap())
            })
        });
    }
    g.bench_function("copy (floor)", |b| {
        b.iter(|| {
            let p = packet(black_box(1));
            black_box(p[100])
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
