//! A lock-free stack of `u32` indices (a Treiber stack) whose head carries
//! a tag bumped on every push and pop, so a pop that read a head which was
//! popped and pushed again meanwhile fails its exchange (no ABA). The links
//! live with the caller's elements (one `AtomicU32` each: the next index
//! plus one, 0 for none); the head is `tag << 32 | (top index + 1)`, 0 in
//! the low half when empty. Used by the private-memory pool's free slots and
//! the registry's free slots.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub(crate) struct TaggedStack(AtomicU64);

impl TaggedStack {
    pub(crate) const fn new() -> Self {
        TaggedStack(AtomicU64::new(0))
    }

    /// Pushes `idx`, whose link is `link`. The exchange releases what the
    /// caller wrote to the element before (a pop acquires it).
    pub(crate) fn push(&self, idx: u32, link: &AtomicU32) {
        let mut head = self.0.load(Ordering::Relaxed);
        loop {
            link.store(head as u32, Ordering::Relaxed);
            let new = ((head >> 32).wrapping_add(1) << 32) | (idx as u64 + 1);
            match self
                .0
                .compare_exchange_weak(head, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// Whether the stack is empty, read with `order`.
    pub(crate) fn is_empty(&self, order: Ordering) -> bool {
        self.0.load(order) as u32 == 0
    }

    /// Pops the top index with its element: `elem(i)` finds element `i`
    /// (`None` ends the pop as if the stack were empty), `link` its link.
    pub(crate) fn pop<'a, E>(
        &self,
        elem: impl Fn(u32) -> Option<&'a E>,
        link: impl Fn(&'a E) -> &'a AtomicU32,
    ) -> Option<(u32, &'a E)> {
        let mut head = self.0.load(Ordering::Acquire);
        loop {
            let top = head as u32;
            if top == 0 {
                return None;
            }
            // The element may be popped and pushed again meanwhile: then the
            // tag has changed and the exchange below fails.
            let e = elem(top - 1)?;
            let next = link(e).load(Ordering::Relaxed);
            let new = ((head >> 32).wrapping_add(1) << 32) | next as u64;
            match self
                .0
                .compare_exchange_weak(head, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some((top - 1, e)),
                Err(h) => head = h,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TaggedStack;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn pops_in_reverse_push_order_then_empty() {
        let links: Vec<AtomicU32> = (0..4).map(|_| AtomicU32::new(0)).collect();
        let s = TaggedStack::new();
        let pop = || s.pop(|i| links.get(i as usize), |l| l).map(|(i, _)| i);
        assert_eq!(pop(), None);
        for i in [2, 0, 3] {
            s.push(i, &links[i as usize]);
        }
        assert_eq!(
            (pop(), pop(), pop(), pop()),
            (Some(3), Some(0), Some(2), None)
        );
    }
}
