//! Work spread over the cores, for the stages' data-parallel loops.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `f(i)` for every `i` in `0..n`, computed on every core (each thread
/// takes the next block of `block` indices), returned in index order.
pub fn map_on_every_core<T: Send>(n: usize, block: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let block = block.max(1);
    let threads = std::thread::available_parallelism()
        .map_or(1, |c| c.get())
        .min(n.div_ceil(block));
    if threads <= 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done: Vec<(usize, Vec<T>)> = Vec::new();
        loop {
            let start = next.fetch_add(block, Ordering::Relaxed);
            if start >= n {
                return done;
            }
            done.push((start, (start..(start + block).min(n)).map(&f).collect()));
        }
    };
    let mut blocks = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for h in helpers {
            all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        all
    });
    blocks.sort_unstable_by_key(|(start, _)| *start);
    blocks.into_iter().flat_map(|(_, values)| values).collect()
}

/// Runs `a` here and `b` on a thread of its own, and returns both results.
pub fn join<A, B: Send>(a: impl FnOnce() -> A, b: impl FnOnce() -> B + Send) -> (A, B) {
    std::thread::scope(|s| {
        let b = s.spawn(b);
        let a = a();
        (a, b.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_is_mapped_once_in_order() {
        for block in [1, 64] {
            for n in [0, 1, 63, 64, 65, 1000] {
                assert_eq!(
                    map_on_every_core(n, block, |i| 3 * i),
                    (0..n).map(|i| 3 * i).collect::<Vec<_>>()
                );
            }
        }
    }
}
