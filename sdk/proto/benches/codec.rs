//! The codec's per-batch and per-request costs (docs/performance.md, "Criterion benches"):
//! building a batch as the producer does, validating it whole as the broker does on produce,
//! splitting and decoding fetched batches as the consumer does, and a request frame's control
//! message both ways. `cargo bench -p sluice-proto --bench codec`.

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sluice_proto::batch::{
    self, BatchBuilder, Compression, MAX_DECOMPRESSED, Record, decode_records, split_batches,
};
use sluice_proto::frame::{decode_body, encode_head};
use sluice_proto::{Acks, ProduceRequest, Request};

/// Records of `size` bytes of incompressible-ish filler, with a timestamp each.
fn records(count: usize, size: usize) -> Vec<Record> {
    (0..count)
        .map(|i| Record {
            key: None,
            value: Some(Bytes::from(
                (0..size)
                    .map(|j| {
                        ((i * 31 + j) as u32)
                            .wrapping_mul(2_654_435_761)
                            .to_le_bytes()[3]
                    })
                    .collect::<Vec<u8>>(),
            )),
            headers: Vec::new(),
            timestamp: 1_700_000_000_000 + i as i64,
        })
        .collect()
}

fn build(records: &[Record], compression: Compression) -> Vec<u8> {
    let mut builder = BatchBuilder::new(compression);
    for r in records {
        builder.push(r);
    }
    builder.finish(7, 0, 0).expect("non-empty batch")
}

fn batches(c: &mut Criterion) {
    // The producer's batches: 1 MiB of 1 KiB records, and of 100 B records.
    for (name, count, size) in [("1KiB", 1024, 1024), ("100B", 10_000, 100)] {
        let recs = records(count, size);
        let bytes = build(&recs, Compression::None);
        let mut group = c.benchmark_group(format!("batch/{name}x{count}"));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function("build", |b| b.iter(|| build(&recs, Compression::None)));
        group.bench_function("build_lz4", |b| b.iter(|| build(&recs, Compression::Lz4)));
        group.bench_function("validate", |b| {
            b.iter(|| batch::validate_with_limit(&bytes, MAX_DECOMPRESSED).expect("valid"))
        });
        let stored = Bytes::from(bytes.clone());
        group.bench_function("split_and_decode", |b| {
            b.iter(|| {
                let mut n = 0;
                for (header, batch) in split_batches(stored.clone()).expect("splits") {
                    n += decode_records(&header, &batch).expect("decodes").len();
                }
                n
            })
        });
        group.bench_function("assign_offset", |b| {
            b.iter_batched_ref(
                || bytes.clone(),
                |batch| batch::assign_offset(batch, 1_000_000, 3),
                BatchSize::LargeInput,
            )
        });
        group.finish();
    }
}

fn frames(c: &mut Criterion) {
    let request = Request::Produce(ProduceRequest {
        topic: "orders".into(),
        partition: 3,
        acks: Acks::All,
        timeout_ms: 30_000,
        leader_epoch: Some(2),
    });
    let mut group = c.benchmark_group("frame/produce_request");
    group.bench_function("encode_head", |b| {
        b.iter(|| encode_head(&request, 1 << 20).expect("encodes"))
    });
    let head = encode_head(&request, 0).expect("encodes");
    let body = Bytes::from(head[4..].to_vec());
    group.bench_function("decode_body", |b| {
        b.iter(|| decode_body::<Request>(body.clone()).expect("decodes"))
    });
    group.finish();
}

criterion_group!(benches, batches, frames);
criterion_main!(benches);
