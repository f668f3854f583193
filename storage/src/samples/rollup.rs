//! Per-minute summaries of the samples of each immutable Parquet file, so a
//! range function over a long window (`rate(x[1h])` at one instant, the
//! topology's counters) reads about one summary per series and minute
//! instead of decoding every sample.
//!
//! A [`Summary`] keeps what PromQL's range functions over counters need:
//! first and last sample, count, and the sum of the values before each
//! decrease (Prometheus's counter-reset correction). Summaries of
//! consecutive, non-overlapping pieces of a series compose exactly, so the
//! summary of a window built from cells is the one computed from its raw
//! samples (up to the order in which reset corrections are added).
//!
//! Cell `c` holds the samples with `(c - 1) * CELL_MS < t <= c * CELL_MS`,
//! left-open like PromQL's range windows: a window `(s, e]` whose start is a
//! whole minute reads only whole cells at its start.

use super::model::is_stale_nan;

/// Width of a cell (ms).
pub const CELL_MS: i64 = 60_000;

/// The cell holding time `t`.
#[inline]
pub fn cell_of(t: i64) -> i64 {
    (t + CELL_MS - 1).div_euclid(CELL_MS)
}

/// What range functions need from a run of samples of one series, sorted by
/// time with unique times; staleness markers are never part of it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub first_t: i64,
    pub first_v: f64,
    pub last_t: i64,
    pub last_v: f64,
    pub count: u64,
    /// The sum of the value before each decrease.
    pub resets: f64,
}

impl Summary {
    pub fn one(t: i64, v: f64) -> Summary {
        Summary {
            first_t: t,
            first_v: v,
            last_t: t,
            last_v: v,
            count: 1,
            resets: 0.0,
        }
    }

    /// Adds a sample after the last one.
    #[inline]
    pub fn push(&mut self, t: i64, v: f64) {
        if v < self.last_v {
            self.resets += self.last_v;
        }
        self.last_t = t;
        self.last_v = v;
        self.count += 1;
    }

    /// Appends a summary of samples that all come after this one's.
    #[inline]
    pub fn append(&mut self, o: &Summary) {
        if o.first_v < self.last_v {
            self.resets += self.last_v;
        }
        self.resets += o.resets;
        self.last_t = o.last_t;
        self.last_v = o.last_v;
        self.count += o.count;
    }

    /// Summary of samples sorted by time with unique times (staleness
    /// markers skipped); None when there are none.
    pub fn of(ts: &[i64], vs: &[f64]) -> Option<Summary> {
        let mut out: Option<Summary> = None;
        for (&t, &v) in ts.iter().zip(vs) {
            if is_stale_nan(v) {
                continue;
            }
            match &mut out {
                None => out = Some(Summary::one(t, v)),
                Some(s) => s.push(t, v),
            }
        }
        out
    }

    /// Counter increase from the first to the last sample, resets
    /// corrected (what `increase` extrapolates from).
    pub fn counter_increase(&self) -> f64 {
        self.last_v - self.first_v + self.resets
    }
}

/// One cell of one series, compact: times as offsets within the cell, and
/// running totals over the series' cells in the file so a run of whole
/// cells is summarised from its two ends.
#[derive(Clone, Copy, Debug)]
struct Cell {
    first_v: f64,
    last_v: f64,
    /// Reset corrections inside this cell.
    resets: f64,
    /// Reset corrections of this and every earlier cell of the series in
    /// the file, including those between cells.
    cum_resets: f64,
    /// Samples in this and every earlier cell of the series in the file.
    cum_count: u32,
    /// Cell index minus the file's base.
    cell: u32,
    first_dt: u16,
    last_dt: u16,
}

impl Cell {
    #[inline]
    fn start(&self, base: i64) -> i64 {
        (base + self.cell as i64 - 1) * CELL_MS + 1
    }

    #[inline]
    fn first_t(&self, base: i64) -> i64 {
        self.start(base) + self.first_dt as i64
    }

    #[inline]
    fn last_t(&self, base: i64) -> i64 {
        self.start(base) + self.last_dt as i64
    }
}

/// The cells of every series of one file.
#[derive(Debug, Default)]
pub(crate) struct FileCells {
    base: i64,
    ids: Vec<i64>,
    /// `cells[starts[k]..starts[k + 1]]` are the cells of `ids[k]`.
    starts: Vec<u32>,
    cells: Vec<Cell>,
    /// Every sample of `ids[k]` in the file, summarised: what a window
    /// holding the whole file reads, in id order (no cell lookups).
    whole: Vec<Summary>,
}

/// How a file's cells of one series relate to a window.
pub(crate) enum Part {
    /// Every sample of the series in the window, as one summary (None: no
    /// sample of it in the window).
    Whole(Option<Summary>),
    /// A cell straddles the window's edge: read the raw samples.
    Partial,
}

impl FileCells {
    pub(crate) fn bytes(&self) -> usize {
        self.ids.len() * (12 + std::mem::size_of::<Summary>())
            + self.cells.len() * std::mem::size_of::<Cell>()
            + 64
    }

    /// Every sample of series `k` (an index from [`FileCells::join`]).
    #[inline]
    pub(crate) fn whole(&self, k: usize) -> Summary {
        self.whole[k]
    }

    /// Index of each wanted id (sorted) in this file, by merging the two
    /// sorted lists: calls `f(slot in wanted, index here)`.
    pub(crate) fn join(&self, wanted: &[i64], mut f: impl FnMut(usize, usize)) {
        let (mut i, mut j) = (0, 0);
        let ids = &self.ids;
        while i < wanted.len() && j < ids.len() {
            match wanted[i].cmp(&ids[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => {
                    // Gallop: usually the next wanted id is a few ahead
                    // (sequential reads); far ahead, a search in the range.
                    let w = wanted[i];
                    let mut step = 1;
                    while j + step < ids.len() && ids[j + step] < w {
                        j += step;
                        step *= 2;
                    }
                    let end = (j + step + 1).min(ids.len());
                    j += ids[j..end].partition_point(|&x| x < w);
                }
                std::cmp::Ordering::Equal => {
                    f(i, j);
                    i += 1;
                    j += 1;
                }
            }
        }
    }

    /// The samples of series `k` (an index from [`FileCells::join`]) in
    /// `[lo, hi]`: from the cells at the two ends of the run of cells the
    /// window covers (running totals give the rest).
    pub(crate) fn part(&self, k: usize, lo: i64, hi: i64) -> Part {
        let cells = &self.cells[self.starts[k] as usize..self.starts[k + 1] as usize];
        let base = self.base;
        let (clo, chi) = (cell_of(lo) - base, cell_of(hi) - base);
        let mut a = find(cells, clo);
        let mut b = find(cells, chi + 1);
        // Cells a..b may hold samples in the window; only the first and
        // the last can reach past its edges.
        if a < b {
            let c = &cells[a];
            if c.last_t(base) < lo {
                a += 1;
            } else if c.first_t(base) < lo {
                return Part::Partial;
            }
        }
        if a < b {
            let c = &cells[b - 1];
            if c.first_t(base) > hi {
                b -= 1;
            } else if c.last_t(base) > hi {
                return Part::Partial;
            }
        }
        if a >= b {
            return Part::Whole(None);
        }
        let (f, l) = (&cells[a], &cells[b - 1]);
        let before = if a == 0 { 0 } else { cells[a - 1].cum_count };
        let resets = if a + 1 == b {
            f.resets
        } else {
            f.resets + (l.cum_resets - f.cum_resets)
        };
        Part::Whole(Some(Summary {
            first_t: f.first_t(base),
            first_v: f.first_v,
            last_t: l.last_t(base),
            last_v: l.last_v,
            count: (l.cum_count - before) as u64,
            resets,
        }))
    }
}

/// The index of the first of `cells` (sorted by cell) at or after cell
/// `c`. A series scraped every minute or more often has a cell per minute:
/// the index is then `c` minus its first cell, found with two reads (a
/// binary search would touch a cache line per step).
#[inline]
fn find(cells: &[Cell], c: i64) -> usize {
    let Some(first) = cells.first() else { return 0 };
    let guess = c - first.cell as i64;
    if guess <= 0 {
        return 0;
    }
    let g = guess as usize;
    if g >= cells.len() {
        if (cells[cells.len() - 1].cell as i64) < c {
            return cells.len();
        }
    } else if cells[g].cell as i64 == c && (cells[g - 1].cell as i64) < c {
        return g;
    }
    cells.partition_point(|x| (x.cell as i64) < c)
}

/// Builds [`FileCells`] from series pushed in id order.
pub(crate) struct CellsBuilder {
    out: FileCells,
    based: bool,
    /// Running totals of the series being pushed, and its last value.
    cum_resets: f64,
    cum_count: u32,
    last_v: Option<f64>,
}

impl CellsBuilder {
    pub(crate) fn new() -> CellsBuilder {
        CellsBuilder {
            out: FileCells::default(),
            based: false,
            cum_resets: 0.0,
            cum_count: 0,
            last_v: None,
        }
    }

    /// One series' samples, sorted by time with unique times. Series must
    /// come in increasing id order.
    pub(crate) fn push_series(&mut self, id: i64, ts: &[i64], vs: &[f64]) {
        let mut open: Option<(i64, Summary)> = None;
        // The whole run, composed from its cells as they close.
        let mut whole: Option<Summary> = None;
        let before = self.out.cells.len();
        (self.cum_resets, self.cum_count, self.last_v) = (0.0, 0, None);
        let mut close = |b: &mut Self, c: i64, s: Summary| {
            b.close(c, &s);
            match &mut whole {
                None => whole = Some(s),
                Some(w) => w.append(&s),
            }
        };
        for (&t, &v) in ts.iter().zip(vs) {
            if is_stale_nan(v) {
                continue;
            }
            let c = cell_of(t);
            match &mut open {
                Some((oc, s)) if *oc == c => s.push(t, v),
                _ => {
                    if let Some((oc, s)) = open.take() {
                        close(self, oc, s);
                    }
                    open = Some((c, Summary::one(t, v)));
                }
            }
        }
        if let Some((oc, s)) = open {
            close(self, oc, s);
        }
        if let Some(whole) = whole {
            if self.out.starts.is_empty() {
                self.out.starts.push(before as u32);
            }
            self.out.ids.push(id);
            self.out.whole.push(whole);
            self.out.starts.push(self.out.cells.len() as u32);
        }
    }

    fn close(&mut self, c: i64, s: &Summary) {
        if !self.based {
            // Files hold one two-hour partition: the first cell seen is at
            // most two hours after any other, so a base a partition earlier
            // keeps every offset positive.
            self.out.base = c - 2 * 120 - 1;
            self.based = true;
        }
        if c <= self.out.base {
            // Not one partition after all: move the base back.
            let d = self.out.base - c + 2 * 120 + 1;
            for cell in &mut self.out.cells {
                cell.cell += d as u32;
            }
            self.out.base -= d;
        }
        let start = (c - 1) * CELL_MS + 1;
        if let Some(prev) = self.last_v
            && s.first_v < prev
        {
            self.cum_resets += prev;
        }
        self.cum_resets += s.resets;
        self.cum_count += s.count as u32;
        self.last_v = Some(s.last_v);
        self.out.cells.push(Cell {
            first_v: s.first_v,
            last_v: s.last_v,
            resets: s.resets,
            cum_resets: self.cum_resets,
            cum_count: self.cum_count,
            cell: (c - self.out.base) as u32,
            first_dt: (s.first_t - start) as u16,
            last_dt: (s.last_t - start) as u16,
        });
    }

    pub(crate) fn finish(self) -> FileCells {
        let mut out = self.out;
        if out.starts.is_empty() {
            out.starts.push(0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(ts: &[i64], vs: &[f64], lo: i64, hi: i64) -> Option<Summary> {
        let a = ts.partition_point(|&t| t < lo);
        let b = ts.partition_point(|&t| t <= hi);
        Summary::of(&ts[a..b], &vs[a..b])
    }

    /// Cells answer exactly what the raw samples answer, for windows whose
    /// edges do not cut a cell; and say `Partial` otherwise.
    #[test]
    fn cells_match_raw_samples() {
        let mut seed = 7u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let n = (rnd() % 400) as usize;
            let mut t = 1_764_000_000_000i64 + (rnd() % 120_000) as i64;
            let (mut ts, mut vs) = (vec![], vec![]);
            let mut v = (rnd() % 1000) as f64;
            for _ in 0..n {
                t += 1 + (rnd() % 30_000) as i64;
                v = match rnd() % 20 {
                    0 => (rnd() % 10) as f64, // counter reset
                    1 => f64::from_bits(super::super::model::STALE_NAN_BITS),
                    _ => v + (rnd() % 50) as f64, // growth
                };
                ts.push(t);
                vs.push(v);
            }
            let mut b = CellsBuilder::new();
            b.push_series(42, &ts, &vs);
            let fc = b.finish();
            if ts.is_empty() {
                assert!(fc.ids.is_empty());
                continue;
            }
            assert_eq!(
                Some(fc.whole(0)).map(|s| (s.first_t, s.last_t, s.count)),
                Summary::of(&ts, &vs).map(|s| (s.first_t, s.last_t, s.count))
            );
            let lo0 = ts[0] - 100_000;
            let hi0 = ts[ts.len() - 1] + 100_000;
            for _ in 0..20 {
                let mut lo = lo0 + (rnd() % ((hi0 - lo0) as u64)) as i64;
                let mut hi = lo + (rnd() % ((hi0 - lo) as u64 + 1)) as i64;
                if round % 2 == 0 {
                    // Whole minutes, as the topology asks.
                    lo = (lo.div_euclid(CELL_MS)) * CELL_MS + 1;
                    hi = (hi.div_euclid(CELL_MS) + 1) * CELL_MS;
                }
                let want = raw(&ts, &vs, lo, hi);
                match fc.part(0, lo, hi) {
                    Part::Whole(got) => {
                        assert_eq!(
                            got.map(|s| (s.first_t, s.last_t, s.count)),
                            want.map(|s| (s.first_t, s.last_t, s.count))
                        );
                        if let (Some(g), Some(w)) = (got, want) {
                            assert_eq!(g.first_v.to_bits(), w.first_v.to_bits());
                            assert_eq!(g.last_v.to_bits(), w.last_v.to_bits());
                            assert!((g.resets - w.resets).abs() <= 1e-9 * w.resets.abs().max(1.0));
                        }
                    }
                    Part::Partial => {
                        assert!(round % 2 == 1, "aligned windows never cut a cell");
                        // Some cell really has samples on both sides of an edge.
                        let cut = |e: i64| {
                            let c = cell_of(e);
                            let (s, f) = ((c - 1) * CELL_MS + 1, c * CELL_MS);
                            let n_in = ts
                                .iter()
                                .zip(&vs)
                                .filter(|(t, v)| !is_stale_nan(**v) && **t >= s && **t <= f);
                            let (mut before, mut after) = (false, false);
                            for (t, _) in n_in {
                                if *t < e { before = true } else { after = true }
                            }
                            before && after
                        };
                        assert!(cut(lo) || cut(hi + 1), "partial without a cut cell");
                    }
                }
            }
        }
    }

    /// Series far apart in time (more than a partition) still get right cells.
    #[test]
    fn cells_far_apart() {
        let mut b = CellsBuilder::new();
        let late: Vec<i64> = (0..10).map(|i| 1_800_000_000_000 + i * 15_000).collect();
        let early: Vec<i64> = late.iter().map(|t| t - 30 * 86_400_000).collect();
        let vs: Vec<f64> = (0..10).map(|i| i as f64).collect();
        b.push_series(1, &late, &vs);
        b.push_series(2, &early, &vs);
        let fc = b.finish();
        for (k, ts) in [(0, &late), (1, &early)] {
            let Part::Whole(Some(s)) = fc.part(k, ts[0] - 60_000, ts[9] + 60_000) else {
                panic!("series {k}: no whole summary");
            };
            assert_eq!((s.first_t, s.last_t, s.count), (ts[0], ts[9], 10));
        }
    }

    #[test]
    fn compose_equals_sequential() {
        let ts: Vec<i64> = (0..10).map(|i| i * 1000).collect();
        let vs = [5.0, 7.0, 2.0, 3.0, 3.0, 1.0, 9.0, 10.0, 0.0, 4.0];
        let whole = Summary::of(&ts, &vs).unwrap();
        let mut a = Summary::of(&ts[..4], &vs[..4]).unwrap();
        a.append(&Summary::of(&ts[4..], &vs[4..]).unwrap());
        assert_eq!(a, whole);
        assert_eq!(whole.resets, 7.0 + 3.0 + 10.0);
        assert_eq!(whole.counter_increase(), 4.0 - 5.0 + 20.0);
    }
}
