//! A boxed future whose memory its thread keeps for the next one of the
//! same size. The wait for a server is boxed: its future is large, and an
//! idle client's task is as large as its largest state. When clients
//! outnumber servers most transactions wait, many at once, past what
//! glibc's per-thread cache keeps of one size: its malloc and free of the
//! box were about 300 instructions a wait. A thread keeps the blocks given
//! back to it, as it keeps read buffers (`buffers.rs`).

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Blocks a thread keeps at most (of about 1 KiB for the wait's future).
const SPARES_KEPT: usize = 64;

/// A thread's spare blocks, each with the layout it was allocated with;
/// freed with the thread.
struct Spares(Vec<(Layout, NonNull<u8>)>);

impl Drop for Spares {
    fn drop(&mut self) {
        for (layout, block) in self.0.drain(..) {
            // Safety: allocated with `alloc(layout)` and owned by the list.
            unsafe { dealloc(block.as_ptr(), layout) };
        }
    }
}

thread_local! {
    static SPARES: RefCell<Spares> = const { RefCell::new(Spares(Vec::new())) };
}

/// A block for `layout`, a spare of this thread's when it has one.
fn block_for(layout: Layout) -> NonNull<u8> {
    let spare = SPARES
        .try_with(|spares| {
            let spares = &mut spares.borrow_mut().0;
            let found = spares.iter().rposition(|(kept, _)| *kept == layout)?;
            Some(spares.swap_remove(found).1)
        })
        .ok()
        .flatten();
    spare.unwrap_or_else(|| {
        // Safety: `layout` has a size (zero-sized futures take no block).
        NonNull::new(unsafe { alloc(layout) }).unwrap_or_else(|| handle_alloc_error(layout))
    })
}

/// Gives `block`, allocated for `layout`, to this thread's spares, or
/// frees it when they are full (or the thread is ending).
fn give_back(layout: Layout, block: NonNull<u8>) {
    let kept = SPARES
        .try_with(|spares| {
            let spares = &mut spares.borrow_mut().0;
            let room = spares.len() < SPARES_KEPT;
            if room {
                spares.push((layout, block));
            }
            room
        })
        .unwrap_or(false);
    if !kept {
        // Safety: allocated with `alloc(layout)`, and nothing else holds it.
        unsafe { dealloc(block.as_ptr(), layout) };
    }
}

/// A future on the heap, like `Pin<Box<F>>`, whose block goes to the
/// thread's spares when it is dropped.
pub(super) struct SpareBox<F> {
    future: NonNull<F>,
}

// Owns its future as a `Box` does.
unsafe impl<F: Send> Send for SpareBox<F> {}
unsafe impl<F: Sync> Sync for SpareBox<F> {}

impl<F> SpareBox<F> {
    /// `future`, moved into a block of this thread's spares or a new one.
    pub(super) fn new(future: F) -> Self {
        let layout = Layout::new::<F>();
        let block = if layout.size() == 0 {
            NonNull::<F>::dangling()
        } else {
            block_for(layout).cast::<F>()
        };
        // Safety: the block is valid for a write of `F` and aligned for it.
        unsafe { block.as_ptr().write(future) };
        Self { future: block }
    }
}

impl<F> Drop for SpareBox<F> {
    fn drop(&mut self) {
        // Safety: the future was written in `new` and is dropped only here.
        unsafe { std::ptr::drop_in_place(self.future.as_ptr()) };
        let layout = Layout::new::<F>();
        if layout.size() > 0 {
            give_back(layout, self.future.cast());
        }
    }
}

impl<F: Future> Future for SpareBox<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Safety: the future lives in its block until it is dropped and is
        // never moved out of it: pinned, as a `Box`'s contents are.
        unsafe { Pin::new_unchecked(&mut *self.future.as_ptr()) }.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Counts its drops.
    struct Dropped(Arc<AtomicUsize>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_future_runs_to_its_output_and_is_dropped_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let held = Dropped(drops.clone());
        let out = SpareBox::new(async move {
            tokio::task::yield_now().await;
            let _held = held;
            [7u8; 600]
        })
        .await;
        assert_eq!(out, [7u8; 600]);
        assert_eq!(drops.load(Ordering::SeqCst), 1);

        // Dropped before it ran: what it holds is dropped with it, once.
        let held = Dropped(drops.clone());
        let unpolled = SpareBox::new(async move {
            let _held = held;
        });
        drop(unpolled);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_block_given_back_is_taken_again_by_a_future_of_its_size() {
        let first = SpareBox::new(std::future::ready([1u64; 100]));
        let address = first.future.as_ptr() as usize;
        drop(first);
        let second = SpareBox::new(std::future::ready([2u64; 100]));
        assert_eq!(second.future.as_ptr() as usize, address);
        // Another size does not take it.
        let other = SpareBox::new(std::future::ready([3u64; 101]));
        assert_ne!(other.future.as_ptr() as usize, address);
    }

    #[test]
    fn a_thread_keeps_a_bounded_number_of_blocks() {
        let boxes: Vec<_> = (0..SPARES_KEPT + 10)
            .map(|n| SpareBox::new(std::future::ready([n; 40])))
            .collect();
        drop(boxes);
        let kept = SPARES.with(|spares| spares.borrow().0.len());
        assert_eq!(kept, SPARES_KEPT);
    }

    /// A future with no state.
    struct Five;

    impl Future for Five {
        type Output = u8;

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u8> {
            Poll::Ready(5)
        }
    }

    #[tokio::test]
    async fn a_zero_sized_future_takes_no_block() {
        assert_eq!(std::mem::size_of::<Five>(), 0);
        let before = SPARES.with(|spares| spares.borrow().0.len());
        assert_eq!(SpareBox::new(Five).await, 5);
        assert_eq!(SPARES.with(|spares| spares.borrow().0.len()), before);
    }
}
