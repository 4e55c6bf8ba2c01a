//! Encoding and decoding one task message, the per-message JSON work of every publisher
//! and worker. Run with `cargo bench -p common --bench task`.

use std::hint::black_box;

use common::Task;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Bytes of `data`: no data, the publish-rate case's small task, and its 1 KiB task.
const DATA_SIZES: [usize; 3] = [0, 64, 1024];

fn task_with_data(size: usize) -> Task {
    let data = (size > 0).then(|| "x".repeat(size));
    Task::new("TASK-000001", data)
}

fn encode_and_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("task");
    for size in DATA_SIZES {
        let task = task_with_data(size);
        let payload = task.to_bytes();
        group.throughput(Throughput::Bytes(payload.len() as u64));

        group.bench_with_input(BenchmarkId::new("to_bytes", size), &task, |b, task| {
            b.iter(|| black_box(task).to_bytes());
        });
        group.bench_with_input(
            BenchmarkId::new("from_bytes", size),
            &payload,
            |b, payload| {
                b.iter(|| Task::from_bytes(black_box(payload)));
            },
        );
        // What load_generator does per message: a fresh id and timestamp, then encode.
        group.bench_with_input(
            BenchmarkId::new("new_and_encode", size),
            &size,
            |b, &size| {
                let data = (size > 0).then(|| "x".repeat(size));
                b.iter(|| Task::new(black_box("TASK-000001"), data.clone()).to_bytes());
            },
        );
    }
    group.finish();
}

criterion_group!(benches, encode_and_decode);
criterion_main!(benches);
