//! The memory under a table: an array of slots mapped straight from the
//! kernel, zero-filled by it page by page as the slots are first touched.
//!
//! Why not a `Vec`: making a table's array must not stall the dataplane.
//! Writing a million free slots (64 MB) faulted every page in at once,
//! tens of milliseconds; an anonymous mapping costs one system call, and
//! each page's zeroing falls on the first packet that touches it. A big
//! array is placed on 2 MB boundaries and offered for transparent huge
//! pages (64 of them cover a million flows, where 4 KB pages would make
//! each random lookup a TLB miss too); a kernel that refuses keeps normal
//! pages.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Types whose all-zero bytes are a valid value (a free slot is all zeros).
///
/// # Safety
/// Implement only for types whose all-zero bytes are a valid value: made of
/// integers and fieldless enums with a zero variant, no references or
/// pointers.
pub(in crate::pipeline::lb::conntrack) unsafe trait Zeroable:
    Copy
{
}

// SAFETY: an integer.
unsafe impl Zeroable for u64 {}

/// A 2 MB huge page.
const HUGE: usize = 2 << 20;

/// `len` values of `T`, zeroed, in their own mapping.
pub(in crate::pipeline::lb::conntrack) struct Slots<T: Zeroable> {
    ptr: NonNull<T>,
    len: usize,
    /// The mapping's length in bytes (0: nothing mapped).
    mapped: usize,
}

// SAFETY: the mapping is owned like a Box's memory; sharing or sending it
// is as safe as sharing or sending the `T`s in it.
unsafe impl<T: Zeroable + Send> Send for Slots<T> {}
// SAFETY: as above; `&Slots` only hands out `&[T]`.
unsafe impl<T: Zeroable + Sync> Sync for Slots<T> {}

impl<T: Zeroable> Slots<T> {
    /// No slots.
    pub fn empty() -> Self {
        Slots {
            ptr: NonNull::dangling(),
            len: 0,
            mapped: 0,
        }
    }

    /// `len` zeroed slots, or `None` when the kernel has no memory for them.
    pub fn zeroed(len: usize) -> Option<Self> {
        let bytes = len.checked_mul(std::mem::size_of::<T>())?;
        if bytes == 0 {
            return Some(Self::empty());
        }
        // A huge-page array gets 2 MB of slack, to start on a boundary.
        let huge = bytes >= 2 * HUGE;
        let mapped = if huge {
            bytes.checked_add(HUGE)?
        } else {
            bytes
        };
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let mut start = base as usize;
        let mut mapped = mapped;
        if huge {
            // Give back the slack before the boundary and after the array.
            let aligned = start.next_multiple_of(HUGE);
            let (head, tail) = (aligned - start, mapped - (aligned - start) - bytes);
            // SAFETY: unmapping pages of our own mapping that no slot uses;
            // advice on the rest changes how pages are backed, never their
            // contents.
            unsafe {
                if head > 0 {
                    libc::munmap(start as *mut libc::c_void, head);
                }
                if tail > 0 {
                    libc::munmap((aligned + bytes) as *mut libc::c_void, tail);
                }
                libc::madvise(aligned as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
            }
            (start, mapped) = (aligned, bytes);
        }
        Some(Slots {
            // A page-aligned address is aligned for any slot type.
            ptr: NonNull::new(start as *mut T)?,
            len,
            mapped,
        })
    }
}

impl<T: Zeroable> Deref for Slots<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: `len` zero-initialised (so valid, see `Zeroable`) values
        // in memory this owns, or a dangling pointer with length 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> DerefMut for Slots<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> Drop for Slots<T> {
    fn drop(&mut self) {
        if self.mapped > 0 {
            // SAFETY: our own mapping, unmapped once; no reference to it
            // outlives `self`.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.mapped) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_start_zeroed_and_keep_what_is_written() {
        for len in [0, 1, 64, 1 << 18] {
            let mut s: Slots<u64> = Slots::zeroed(len).expect("memory for a test table");
            assert_eq!(s.len(), len);
            assert!(s.iter().all(|&v| v == 0));
            if len > 0 {
                s[len - 1] = 7;
                assert_eq!(s[len - 1], 7);
            }
        }
    }

    #[test]
    fn a_big_array_starts_on_a_huge_page_boundary() {
        let s: Slots<u64> = Slots::zeroed(4 * HUGE / 8).expect("memory for a test table");
        assert_eq!(s.as_ptr() as usize % HUGE, 0);
        assert_eq!(s.len(), 4 * HUGE / 8);
    }

    #[test]
    fn an_impossible_size_is_refused() {
        assert!(Slots::<u64>::zeroed(usize::MAX / 4).is_none());
    }
}
