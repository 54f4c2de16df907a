//! SIP parse throughput: podpbx-sip against rsipstack's parser (the reference), same work per
//! iteration: parse one message, then typed access to the top Via (branch), From (tag), To,
//! CSeq, Call-ID and the first Contact.
//!
//! Before the criterion run, a counting global allocator reports heap allocations per message
//! for both parsers; after it, a short fixed-count timing loop prints messages/s and the ratio.
//!
//! Run: `cargo bench -p podpbx-benches --bench sip_parse -- --warm-up-time 1 --measurement-time 3`

use bytes::Bytes;
use criterion::{black_box, Criterion, Throughput};
use podpbx_benches::{SIP_INVITE, SIP_REGISTER};
use podpbx_sip::{Framing, Message};
use rsipstack::sip::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Parse only (ours).
#[inline(never)]
fn ours_parse(buf: &Bytes) -> usize {
    let m = Message::parse(buf.clone(), Framing::Datagram).expect("parse");
    m.buf.len()
}

/// Parse plus typed access (ours); returns something derived from every field.
#[inline(never)]
fn ours(buf: &Bytes) -> usize {
    let m = Message::parse(buf.clone(), Framing::Datagram).expect("parse");
    let via = m.top_via().expect("via");
    let branch = via.branch().expect("branch");
    let from = m.from_hdr().expect("from");
    let tag = from.tag().expect("tag");
    let to = m.to_hdr().expect("to");
    let cseq = m.cseq().expect("cseq");
    let call_id = m.call_id().expect("call-id");
    let contact = m.contact_iter().next().expect("contact").expect("contact");
    black_box(&to.uri.host);
    black_box(&contact.addr.uri.host);
    branch.len()
        + tag.len()
        + to.raw.len()
        + cseq.seq as usize
        + call_id.len()
        + contact.addr.raw.len()
}

/// The same work with rsipstack: `SipMessage::try_from(&[u8])` plus its typed headers.
#[inline(never)]
fn reference(buf: &[u8]) -> usize {
    let m = rsipstack::sip::SipMessage::try_from(buf).expect("parse");
    let via = m.via_header().expect("via").typed().expect("via");
    let branch = via.branch().expect("branch").to_string();
    let from = m.from_header().expect("from").typed().expect("from");
    let tag = from.tag().expect("tag").to_string();
    let to = m.to_header().expect("to").typed().expect("to");
    let cseq = m.cseq_header().expect("cseq").typed().expect("cseq");
    let call_id = m.call_id_header().expect("call-id").value().len();
    let contact = m
        .contact_header()
        .expect("contact")
        .typed()
        .expect("contact");
    black_box(&to.uri);
    black_box(&contact.uri);
    branch.len() + tag.len() + cseq.seq as usize + call_id
}

fn allocs_of(f: impl Fn() -> usize) -> usize {
    black_box(f()); // warm up lazily initialised statics
    let before = ALLOCS.load(Ordering::Relaxed);
    black_box(f());
    ALLOCS.load(Ordering::Relaxed) - before
}

fn report_allocations(samples: &[(&str, Bytes)]) {
    println!("heap allocations per message (counting global allocator):");
    for (name, buf) in samples {
        let parse = allocs_of(|| ours_parse(buf));
        let typed = allocs_of(|| ours(buf));
        let rs = allocs_of(|| reference(buf));
        println!(
            "  {name:<9} podpbx parse: {parse}, podpbx parse+typed: {typed}, rsipstack parse+typed: {rs}"
        );
    }
}

fn bench(c: &mut Criterion, samples: &[(&str, Bytes)]) {
    let mut g = c.benchmark_group("sip_parse");
    g.throughput(Throughput::Elements(1));
    for (name, buf) in samples {
        g.bench_function(format!("podpbx/{name}"), |b| {
            b.iter(|| ours(black_box(buf)))
        });
        g.bench_function(format!("rsipstack/{name}"), |b| {
            b.iter(|| reference(black_box(buf)))
        });
    }
    g.finish();
}

/// A fixed-count loop to print the rates side by side (criterion's numbers are the reference).
fn report_ratio(samples: &[(&str, Bytes)]) {
    const N: u32 = 100_000;
    println!("\nfixed-count check ({N} messages each):");
    for (name, buf) in samples {
        let rate = |f: &dyn Fn() -> usize| {
            let t = Instant::now();
            for _ in 0..N {
                black_box(f());
            }
            f64::from(N) / t.elapsed().as_secs_f64()
        };
        let ours_rate = rate(&|| ours(black_box(buf)));
        let ref_rate = rate(&|| reference(black_box(buf)));
        println!(
            "  {name:<9} podpbx {:>10.0} msg/s   rsipstack {:>10.0} msg/s   ratio {:.2}x",
            ours_rate,
            ref_rate,
            ours_rate / ref_rate
        );
    }
}

fn main() {
    // Shared (already promoted) buffers, as a transport hands them over: cloning is a refcount bump.
    let samples: Vec<(&str, Bytes)> = vec![
        ("invite", Bytes::from(SIP_INVITE.as_bytes().to_vec())),
        ("register", Bytes::from(SIP_REGISTER.as_bytes().to_vec())),
    ];
    for (_, b) in &samples {
        let _promote = b.clone();
    }
    for (name, buf) in &samples {
        assert!(
            ours(buf) > 0 && reference(buf) > 0,
            "{name} must parse with both"
        );
        println!("{name}: {} bytes", buf.len());
    }
    report_allocations(&samples);
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &samples);
    c.final_summary();
    report_ratio(&samples);
}
