//! The per-operation cost of the routing handle: one `ArcSwap` load plus an in-flight ticket
//! (an atomic add, and an atomic subtract when it drops). Target: at most 100 ns.
//!
//! Run: `cargo bench --bench routing`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use failoverfs::backend::dir::DirBackend;
use failoverfs::routing::{Route, Router, Volume, WaitPolicy};

fn router() -> Arc<Router> {
    let backend = DirBackend::open(std::path::Path::new("/")).expect("open /");
    let volume = Arc::new(Volume::new(0, "bench", Arc::new(backend)));
    Arc::new(Router::new(
        Route::serving(1, volume),
        WaitPolicy::default(),
    ))
}

fn routing(c: &mut Criterion) {
    let r = router();
    c.bench_function("route load + in-flight ticket", |b| {
        b.iter(|| {
            let t = r.enter().expect("open route");
            black_box(t.generation());
        })
    });

    // The same while another thread takes tickets on the same route as fast as it can: the
    // shared in-flight counter's cache line moves between cores on every operation.
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (r, stop) = (r.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t = r.enter().expect("open route");
                black_box(t.generation());
            }
        })
    };
    c.bench_function("route load + in-flight ticket, contended", |b| {
        b.iter(|| {
            let t = r.enter().expect("open route");
            black_box(t.generation());
        })
    });
    stop.store(true, Ordering::Relaxed);
    let _ = other.join();
}

criterion_group!(benches, routing);
criterion_main!(benches);
