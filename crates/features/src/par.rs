//! Filling float columns row by row on every core.

/// Computes `N` float columns of `rows` rows, `row(j, &mut tally)` giving
/// row `j`'s values, in contiguous chunks of rows on one thread per core.
/// Returns the columns and the chunks' tallies, in row order.
pub(crate) fn fill_columns<const N: usize, T: Default + Send>(
    rows: usize,
    row: impl Fn(usize, &mut T) -> [f64; N] + Sync,
) -> (Vec<Vec<f64>>, Vec<T>) {
    let mut cols: Vec<Vec<f64>> = vec![vec![0.0; rows]; N];
    let chunk = rows
        .div_ceil(std::thread::available_parallelism().map_or(1, |c| c.get()))
        .max(1);
    let mut parts: Vec<Vec<&mut [f64]>> = (0..rows.div_ceil(chunk)).map(|_| Vec::new()).collect();
    for col in &mut cols {
        for (k, part) in col.chunks_mut(chunk).enumerate() {
            parts[k].push(part);
        }
    }
    let row = &row;
    let tallies = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .enumerate()
            .map(|(k, mut part)| {
                s.spawn(move || {
                    let mut tally = T::default();
                    let start = k * chunk;
                    let len = part.first().map_or(0, |p| p.len());
                    for j in 0..len {
                        for (col, value) in part.iter_mut().zip(row(start + j, &mut tally)) {
                            col[j] = value;
                        }
                    }
                    tally
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    (cols, tallies)
}

/// `f(0..n)` computed on every core (each thread takes the next block of
/// indices), in index order.
pub(crate) fn map_indices<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    const BLOCK: usize = 64;
    let threads = std::thread::available_parallelism()
        .map_or(1, |c| c.get())
        .min(n.div_ceil(BLOCK));
    if threads <= 1 {
        return (0..n).map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done: Vec<(usize, Vec<T>)> = Vec::new();
        loop {
            let start = next.fetch_add(BLOCK, std::sync::atomic::Ordering::Relaxed);
            if start >= n {
                return done;
            }
            done.push((start, (start..(start + BLOCK).min(n)).map(&f).collect()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_computed_once_in_order() {
        for rows in [0, 1, 2, 3, 7, 1000] {
            let (cols, tallies) = fill_columns(rows, |j, n: &mut usize| {
                *n += 1;
                [j as f64, (2 * j) as f64]
            });
            assert_eq!(cols.len(), 2);
            assert_eq!(cols[0], (0..rows).map(|j| j as f64).collect::<Vec<_>>());
            assert_eq!(
                cols[1],
                (0..rows).map(|j| (2 * j) as f64).collect::<Vec<_>>()
            );
            assert_eq!(tallies.iter().sum::<usize>(), rows);
        }
    }

    #[test]
    fn every_index_is_mapped_once_in_order() {
        for n in [0, 1, 63, 64, 65, 1000] {
            assert_eq!(
                map_indices(n, |i| 3 * i),
                (0..n).map(|i| 3 * i).collect::<Vec<_>>()
            );
        }
    }
}
