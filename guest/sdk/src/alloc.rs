//! The policy component's global allocator: a bump arena in the component's initial memory,
//! then the standard allocator.
//!
//! The host runs every decision in a fresh instance. With the standard allocator alone, the
//! first allocation of every decision grows linear memory (`memory.grow`), and the host's
//! pooling allocator makes the grown pages accessible (`mprotect`) and inaccessible again
//! when the slot is reset: two system calls per decision, and, when another thread of the
//! host is running (a shadow policy, a concurrent request), a TLB shootdown that interrupts
//! it. A decision allocates a few KiB, so an arena in the initial memory (zeroed `.bss`)
//! serves it without growing anything; a decision that needs more falls back to the
//! standard allocator and grows memory as before (the host's memory limit still applies).
//! Arena memory is never reused within an instance: an instance lives for one decision.

#![allow(unsafe_code)] // a global allocator is unsafe by nature

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use std::alloc::System;

/// Bytes of the arena: 64 pages of the initial memory.
const ARENA_BYTES: usize = 256 << 10;

/// The arena, then the standard allocator.
pub struct PolicyAllocator {
    bytes: UnsafeCell<[u8; ARENA_BYTES]>,
    /// Offset of the first free byte in `bytes`.
    next: UnsafeCell<usize>,
}

// SAFETY: a policy component runs on one thread (wasm32-unknown-unknown, no threads): the
// cells are never accessed concurrently.
unsafe impl Sync for PolicyAllocator {}

impl PolicyAllocator {
    pub const fn new() -> Self {
        PolicyAllocator {
            bytes: UnsafeCell::new([0; ARENA_BYTES]),
            next: UnsafeCell::new(0),
        }
    }

    fn contains(&self, ptr: *mut u8) -> bool {
        let base = self.bytes.get() as usize;
        (base..base + ARENA_BYTES).contains(&(ptr as usize))
    }
}

impl Default for PolicyAllocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: `alloc` returns either a block of the arena that no other allocation overlaps
// (the offset only moves forward), aligned as asked, or the standard allocator's block;
// `dealloc` hands back to the standard allocator exactly the blocks it gave.
unsafe impl GlobalAlloc for PolicyAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.bytes.get() as usize;
        // SAFETY: single-threaded (see `Sync`), so no other reference to `next` is live.
        let next = unsafe { &mut *self.next.get() };
        let start = (base + *next)
            .checked_add(layout.align() - 1)
            .map(|a| a & !(layout.align() - 1));
        if let Some(start) = start {
            if let Some(end) = start.checked_add(layout.size()) {
                if end <= base + ARENA_BYTES {
                    *next = end - base;
                    return start as *mut u8;
                }
            }
        }
        // SAFETY: the caller's layout is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.contains(ptr) {
            // SAFETY: not an arena block, so the standard allocator gave it, with `layout`.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}
