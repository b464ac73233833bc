//! A race checker for the GPU pass's two lanes (tests only).
//!
//! On a GPU the forward pass queues the two directions on two CUDA streams
//! and orders them by hand ([`Backend::fork`], [`Backend::join`]): cudarc's
//! own cross-stream tracking is off. A missing or misplaced event would let
//! one stream read a buffer before the other has written it, or free a
//! buffer that the other still uses, and on a GPU that shows only sometimes.
//! [`LaneCheck`] runs the pass on the host (each operation as
//! [`HostBackend`] computes it) and checks every operation against vector
//! clocks of the two lanes, so the ordering is tested on every machine:
//!
//! * each operation on lane `l` ticks `l`'s clock; each buffer keeps the
//!   lane and time of its last write and, per lane, the time of its last
//!   access;
//! * a read on lane `l` needs `l` to have seen the last write (RAW); a
//!   write on `l` needs `l` to have seen every other lane's last access
//!   (WAR, WAW); a download is a read on the lane it is queued on;
//! * dropping a buffer frees it on the lane it was made on (as cudarc's
//!   stream-ordered free does), which must have seen every other lane's
//!   last access;
//! * `fork` gives lane 1 lane 0's clock, `join` lane 0 lane 1's; a wait of
//!   the host for a lane (a download; a trace mark waits for both) gives
//!   every lane that lane's clock, since its work so far has finished.
//!
//! A violation panics, naming the operation and the lanes.

use crate::backend::cuda::{Backend, CnnDims, ConvTable, HostBackend, Upload};
use crate::error::Result;
use std::sync::{Arc, Mutex};

/// The lanes' vector clocks: `vc[l][k]` is how far lane `l` has seen lane
/// `k`'s work.
#[derive(Debug, Default)]
struct Clock {
    lane: usize,
    vc: [[u64; 2]; 2],
}

impl Clock {
    /// Ticks the current lane: the time of an operation queued now.
    fn tick(&mut self) -> (usize, u64) {
        let l = self.lane;
        self.vc[l][l] += 1;
        (l, self.vc[l][l])
    }
}

/// Elementwise maximum of two clocks.
fn max(a: [u64; 2], b: [u64; 2]) -> [u64; 2] {
    [a[0].max(b[0]), a[1].max(b[1])]
}

/// What a buffer's operations so far require of a later one.
#[derive(Debug, Default, Clone, Copy)]
struct Meta {
    /// Lane and time of the last write.
    write: (usize, u64),
    /// Per lane, the time of its last access (0: none).
    access: [u64; 2],
}

/// A host buffer with the lanes' history of it.
#[derive(Debug)]
pub(crate) struct Buf<T> {
    data: Vec<T>,
    /// The lane it was made on (where its free is queued).
    home: usize,
    meta: Mutex<Meta>,
    clock: Arc<Mutex<Clock>>,
}

impl<T> Drop for Buf<T> {
    fn drop(&mut self) {
        let clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let meta = *self.meta.lock().unwrap_or_else(|e| e.into_inner());
        let home = self.home;
        for (k, &t) in meta.access.iter().enumerate() {
            if k != home && clock.vc[home][k] < t && !std::thread::panicking() {
                panic!(
                    "lane check: a buffer of lane {home} is freed there while lane {k} may still use it \
                     (lane {home} has seen lane {k} up to {}, the use is at {t})",
                    clock.vc[home][k]
                );
            }
        }
    }
}

/// [`HostBackend`]'s arithmetic under the lane rules (module docs).
#[derive(Debug, Default)]
pub(crate) struct LaneCheck {
    host: HostBackend,
    clock: Arc<Mutex<Clock>>,
}

impl LaneCheck {
    fn clock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new buffer written by the current lane now.
    fn made<T>(&self, data: Vec<T>) -> Buf<T> {
        let (l, t) = self.clock().tick();
        let mut access = [0; 2];
        access[l] = t;
        Buf {
            data,
            home: l,
            meta: Mutex::new(Meta { write: (l, t), access }),
            clock: self.clock.clone(),
        }
    }

    /// One operation of `what`, queued on the current lane, reading `reads`
    /// and writing `writes`.
    fn op(&self, what: &str, reads: &[&Mutex<Meta>], writes: &[&Mutex<Meta>]) {
        let mut clock = self.clock();
        let (l, t) = clock.tick();
        let seen = clock.vc[l];
        for m in reads {
            let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
            let (w, tw) = m.write;
            assert!(
                seen[w] >= tw,
                "lane check: {what} on lane {l} reads a buffer lane {w} wrote at {tw}, unseen (lane {l} has seen \
                 lane {w} up to {})",
                seen[w]
            );
            m.access[l] = t;
        }
        for m in writes {
            let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
            for (k, &ta) in m.access.iter().enumerate() {
                assert!(
                    k == l || seen[k] >= ta,
                    "lane check: {what} on lane {l} writes a buffer lane {k} used at {ta}, unseen (lane {l} has \
                     seen lane {k} up to {})",
                    seen[k]
                );
            }
            m.write = (l, t);
            m.access[l] = t;
        }
    }
}

impl Upload for LaneCheck {
    type F = Buf<f32>;
    fn up_f32(&self, v: &[f32]) -> Result<Buf<f32>> {
        Ok(self.made(v.to_vec()))
    }
}

impl Backend for LaneCheck {
    type I = Buf<i32>;
    type C = Buf<u16>;
    fn up_i32(&self, v: &[i32]) -> Result<Buf<i32>> {
        Ok(self.made(v.to_vec()))
    }
    fn up_u16(&self, v: &[u16]) -> Result<Buf<u16>> {
        Ok(self.made(v.to_vec()))
    }
    fn zeros(&self, n: usize) -> Result<Buf<f32>> {
        Ok(self.made(vec![0.0; n.max(1)]))
    }
    fn down(&self, x: &Buf<f32>) -> Result<Vec<f32>> {
        self.op("download", &[&x.meta], &[]);
        // The host waited for the lane: what it queues next, on any lane,
        // comes after that lane's work so far.
        let mut c = self.clock();
        let l = c.lane;
        c.vc = [max(c.vc[0], c.vc[l]), max(c.vc[1], c.vc[l])];
        Ok(x.data.clone())
    }
    fn sync(&self) -> Result<()> {
        let mut c = self.clock();
        let all = max(c.vc[0], c.vc[1]);
        c.vc = [all, all];
        Ok(())
    }
    fn copy_into(&self, x: &Buf<f32>, y: &mut Buf<f32>, at: usize, len: usize) -> Result<()> {
        self.op("copy_into", &[&x.meta], &[&y.meta]);
        self.host.copy_into(&x.data, &mut y.data, at, len)
    }
    fn lane(&self, d: usize) {
        self.clock().lane = d.min(1);
    }
    fn fork(&self) -> Result<()> {
        let mut c = self.clock();
        c.vc[1] = max(c.vc[0], c.vc[1]);
        Ok(())
    }
    fn join(&self) -> Result<()> {
        let mut c = self.clock();
        c.vc[0] = max(c.vc[0], c.vc[1]);
        Ok(())
    }
    fn gemm(
        &self,
        mnk: (usize, usize, usize),
        a: (&Buf<f32>, usize),
        lda: usize,
        b: (&Buf<f32>, usize),
        ldb: usize,
        c: &mut Buf<f32>,
        ldc: usize,
    ) -> Result<()> {
        self.op("gemm", &[&a.0.meta, &b.0.meta], &[&c.meta]);
        self.host
            .gemm(mnk, (&a.0.data, a.1), lda, (&b.0.data, b.1), ldb, &mut c.data, ldc)
    }
    fn char_cnn(
        &self,
        chars: &Buf<u16>,
        table: &Buf<f32>,
        w: &Buf<f32>,
        bias: &Buf<f32>,
        convs: &ConvTable,
        out: &mut Buf<f32>,
        dims: CnnDims,
    ) -> Result<()> {
        self.op(
            "char_cnn",
            &[&chars.meta, &table.meta, &w.meta, &bias.meta],
            &[&out.meta],
        );
        self.host.char_cnn(
            &chars.data,
            &table.data,
            &w.data,
            &bias.data,
            convs,
            &mut out.data,
            dims,
        )
    }
    fn add_bias(&self, x: &mut Buf<f32>, bias: &Buf<f32>, n: usize, w: usize) -> Result<()> {
        self.op("add_bias", &[&bias.meta], &[&x.meta]);
        self.host.add_bias(&mut x.data, &bias.data, n, w)
    }
    fn highway(
        &self,
        x: &mut Buf<f32>,
        carry: &Buf<f32>,
        trans: &Buf<f32>,
        bc: &Buf<f32>,
        bt: &Buf<f32>,
        n: usize,
        f: usize,
    ) -> Result<()> {
        self.op("highway", &[&carry.meta, &trans.meta, &bc.meta, &bt.meta], &[&x.meta]);
        self.host
            .highway(&mut x.data, &carry.data, &trans.data, &bc.data, &bt.data, n, f)
    }
    fn gather_rows(
        &self,
        x: &Buf<f32>,
        y: &mut Buf<f32>,
        idx: (&Buf<i32>, usize),
        rows: usize,
        w: usize,
    ) -> Result<()> {
        self.op("gather_rows", &[&x.meta, &idx.0.meta], &[&y.meta]);
        self.host
            .gather_rows(&x.data, &mut y.data, (&idx.0.data, idx.1), rows, w)
    }
    fn lstm_cell(
        &self,
        zx: &Buf<f32>,
        zx_base: usize,
        zh: &Buf<f32>,
        bias: &Buf<f32>,
        c: &mut Buf<f32>,
        m: &mut Buf<f32>,
        na: usize,
        u: usize,
        clip: Option<f32>,
    ) -> Result<()> {
        self.op("lstm_cell", &[&zx.meta, &zh.meta, &bias.meta], &[&c.meta, &m.meta]);
        self.host.lstm_cell(
            &zx.data,
            zx_base,
            &zh.data,
            &bias.data,
            &mut c.data,
            &mut m.data,
            na,
            u,
            clip,
        )
    }
    fn lstm_project_out(
        &self,
        hp: &Buf<f32>,
        h: &mut Buf<f32>,
        out: &mut Buf<f32>,
        x: &Buf<f32>,
        rows: (&Buf<i32>, usize),
        na: usize,
        p: usize,
        clip: Option<f32>,
        residual: bool,
    ) -> Result<()> {
        self.op(
            "lstm_project_out",
            &[&hp.meta, &x.meta, &rows.0.meta],
            &[&h.meta, &out.meta],
        );
        self.host.lstm_project_out(
            &hp.data,
            &mut h.data,
            &mut out.data,
            &x.data,
            (&rows.0.data, rows.1),
            na,
            p,
            clip,
            residual,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ElmoModel;
    use crate::backend::cuda::ZX_BYTES;
    use crate::backend::cuda::tests::{models, on_batches};

    /// The GPU pass's two lanes, checked: every golden-set model, stateless
    /// and stateful, with and without word sharing, whole and in small
    /// blocks of input-side products; the results bitwise the CPU path's.
    #[test]
    #[cfg_attr(miri, ignore = "maps files")]
    fn the_gpu_pass_orders_its_two_lanes() {
        let dir = tempfile::tempdir().unwrap();
        for path in models(dir.path()) {
            for (zx, share) in [(ZX_BYTES, true), (ZX_BYTES, false), (40 << 10, true)] {
                let cpu = super::super::tests::cpu_reference(&path);
                let checked = ElmoModel::load(&path)
                    .unwrap()
                    .with_word_sharing(share)
                    .with_test_backend(LaneCheck::default(), zx)
                    .unwrap();
                let tag = format!("{} zx {zx} share {share}", path.display());
                on_batches(&checked, &cpu, &tag, |name, _, a, b| {
                    assert!(a == b, "{name}: the lane-checked pass differs from the CPU path");
                });
            }
        }
    }

    /// Forks, then reads `x` on lane 1 (a device copy, no wait of the
    /// host); returns the copy, a buffer of lane 1.
    fn read_on_lane_1(be: &LaneCheck, x: &Buf<f32>) -> Buf<f32> {
        be.fork().unwrap();
        be.lane(1);
        let mut z = be.zeros(4).unwrap();
        be.copy_into(x, &mut z, 0, 4).unwrap();
        z
    }

    /// Each rule catches what it is for.
    #[test]
    fn the_checker_catches_unordered_lanes() {
        let caught = |f: fn(&LaneCheck)| {
            let be = LaneCheck::default();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&be)))
                .expect_err("an unordered use must be caught")
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default()
        };
        // Read after write across lanes without a fork.
        let msg = caught(|be| {
            let x = be.up_f32(&[1.0; 4]).unwrap();
            be.lane(1);
            let _ = be.down(&x);
        });
        assert!(msg.contains("reads a buffer lane 0 wrote"), "{msg}");
        // Write after read: lane 1 reads, lane 0 overwrites without a join.
        let msg = caught(|be| {
            let (mut x, y) = (be.zeros(4).unwrap(), be.zeros(4).unwrap());
            let _z = read_on_lane_1(be, &x);
            be.lane(0);
            be.copy_into(&y, &mut x, 0, 4).unwrap();
        });
        assert!(msg.contains("writes a buffer lane 1 used"), "{msg}");
        // A buffer of lane 0 freed while lane 1 may use it.
        let msg = caught(|be| {
            let x = be.zeros(4).unwrap();
            let _z = read_on_lane_1(be, &x);
            drop(x);
        });
        assert!(msg.contains("freed there while lane 1 may still use it"), "{msg}");
        // The same, ordered by a join, passes; so does a read on lane 1
        // ordered by the host's wait for lane 0 (a download there).
        let be = LaneCheck::default();
        let (mut x, y) = (be.zeros(4).unwrap(), be.zeros(4).unwrap());
        let mut z = read_on_lane_1(&be, &x);
        be.lane(0);
        be.join().unwrap();
        be.copy_into(&y, &mut x, 0, 4).unwrap();
        let _ = be.down(&x).unwrap();
        be.lane(1);
        be.copy_into(&x, &mut z, 0, 4).unwrap();
        be.lane(0);
        be.join().unwrap();
        drop(x);
    }
}
