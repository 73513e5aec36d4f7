//! Unit tests of the engine seam: where `Engine::arm_timer` sends a timer,
//! and the parked `CompletionRing`.

use super::manual::kit::Fired;
use super::*;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// An engine that counts where [`Engine::arm_timer`] sent each timer.
struct Routes {
    handed: AtomicU32,
    own: AtomicU32,
    /// Whether the completion thread has a ring to hand timers to.
    ring_elsewhere: AtomicBool,
}

/// Its id, as [`local`] knows the ring installed in one test.
const ID: u64 = u64::MAX - 5;

impl Engine for Routes {
    fn kind(&self) -> EngineKind {
        EngineKind::Manual
    }
    fn submit(&self, _ops: &mut Vec<IoOp>) {}
    fn ring_id(&self) -> Option<u64> {
        Some(ID)
    }
    fn hand_to_completion_ring(&self, _at: Instant, _t: &Weak<dyn Timer>) -> bool {
        let r = self.ring_elsewhere.load(Ordering::SeqCst);
        if r {
            self.handed.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
    fn arm_on_engine_thread(&self, _at: Instant, _t: Weak<dyn Timer>) {
        self.own.fetch_add(1, Ordering::SeqCst);
    }
    fn shutdown(&self) {}
}

fn routes() -> Routes {
    Routes {
        handed: AtomicU32::new(0),
        own: AtomicU32::new(0),
        ring_elsewhere: AtomicBool::new(true),
    }
}

fn counts(e: &Routes) -> (u32, u32) {
    (
        e.handed.load(Ordering::SeqCst),
        e.own.load(Ordering::SeqCst),
    )
}

#[test]
fn a_timer_takes_one_of_three_routes() {
    let e = routes();
    let t = Arc::new(Fired::default());
    let weak = || Arc::downgrade(&t) as Weak<dyn Timer>;
    let now = Instant::now();
    // SYNC: the engine's own thread, ring or not.
    e.arm_timer(now, weak(), true);
    assert_eq!(counts(&e), (0, 1));
    // Asynchronous, armed away from the completion thread: handed over.
    e.arm_timer(now, weak(), false);
    assert_eq!(counts(&e), (1, 1));
    // ... unless that thread has no ring.
    e.ring_elsewhere.store(false, Ordering::SeqCst);
    e.arm_timer(now, weak(), false);
    assert_eq!(counts(&e), (1, 2));
    // A request already gone: no timer at all.
    let gone = Arc::new(Fired::default());
    let w = Arc::downgrade(&gone) as Weak<dyn Timer>;
    drop(gone);
    e.arm_timer(now, w, false);
    assert_eq!(counts(&e), (1, 2));
    assert_eq!(t.times(), 0);
}

#[test]
fn on_the_completion_thread_a_timer_goes_straight_into_its_ring() {
    let Some((ring, _remote)) =
        local::install(ID, 64, &[], &Arc::new(crate::thread_mark::Mark::new()))
    else {
        eprintln!("skipped: io_uring refused here");
        return;
    };
    let ring = CompletionRing::uring(ring);
    assert!(ring.runs_io());
    let e = routes();
    let t = Arc::new(Fired::default());
    e.arm_timer(Instant::now(), Arc::downgrade(&t) as Weak<dyn Timer>, false);
    assert_eq!(counts(&e), (0, 0), "neither handed over nor the engine's");
    for _ in 0..1000 {
        if t.times() == 1 {
            break;
        }
        ring.turn(&|| false, Some(Duration::from_millis(10)));
    }
    assert_eq!(t.times(), 1, "fired by the ring");
    // A SYNC request's timer never goes to this thread's ring.
    e.arm_timer(Instant::now(), Arc::downgrade(&t) as Weak<dyn Timer>, true);
    assert_eq!(counts(&e), (0, 1));
    ring.close();
    assert!(!ring.runs_io() && ring.idle());
}

#[test]
fn a_parked_ring_runs_no_io_and_wakes() {
    let ring = CompletionRing::parked();
    assert!(!ring.runs_io() && ring.idle());
    ring.after_callback(&|| panic!("a parked ring starts no IO"));
    // Work already there: no sleep.
    let t0 = Instant::now();
    ring.turn(&|| true, Some(Duration::from_secs(10)));
    assert!(t0.elapsed() < Duration::from_secs(5));
    ring.close();
}
