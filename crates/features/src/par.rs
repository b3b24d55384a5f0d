//! Filling float columns row by row on every core.

use std::mem::MaybeUninit;

/// Computes `N` float columns of `rows` rows, `row(j, &mut tally)` giving
/// row `j`'s values, in contiguous chunks of rows on one thread per core.
/// Returns the columns and the chunks' tallies, in row order.
pub(crate) fn fill_columns<const N: usize, T: Default + Send>(
    rows: usize,
    row: impl Fn(usize, &mut T) -> [f64; N] + Sync,
) -> (Vec<Vec<f64>>, Vec<T>) {
    // Uninitialised columns, each row written once by the thread that
    // computes it: a zeroed allocation (`vec![0.0; rows]`) was zeroed by
    // the allocator on the calling thread (mimalloc cannot tell that
    // reused memory is zero), first-touching every page of every column
    // on one core before the threads started.
    let mut cols: Vec<Vec<f64>> = (0..N).map(|_| Vec::with_capacity(rows)).collect();
    let chunk = rows
        .div_ceil(std::thread::available_parallelism().map_or(1, |c| c.get()))
        .max(1);
    let mut parts: Vec<Vec<&mut [MaybeUninit<f64>]>> =
        (0..rows.div_ceil(chunk)).map(|_| Vec::new()).collect();
    for col in &mut cols {
        for (k, part) in col.spare_capacity_mut()[..rows]
            .chunks_mut(chunk)
            .enumerate()
        {
            parts[k].push(part);
        }
    }
    let row = &row;
    let tallies: Vec<T> = std::thread::scope(|s| {
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
                            col[j].write(value);
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
    for col in &mut cols {
        // SAFETY: the chunks above partition the first `rows` slots of each
        // column's spare capacity, every chunk went to one thread, and each
        // thread wrote every slot of its chunks (`j` over the whole chunk,
        // one value per column) before it was joined; a panicking thread
        // is resumed above, before this point. So all `rows` elements are
        // initialised `f64`s.
        #[allow(unsafe_code)]
        unsafe {
            col.set_len(rows);
        }
    }
    (cols, tallies)
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
}
