//! Shared queues: a filter's root context registers a queue by name, any VM (of any
//! plugin with the same VM id, as in Envoy; Weft's VM id is empty for every plugin) resolves
//! it and enqueues, and the registering VM's root context is called `proxy_on_queue_ready`
//! on its plugin's tick thread, where it dequeues.

use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The most queues a sidecar holds, and the most items one queue holds.
const MAX_QUEUES: usize = 1024;
const MAX_ITEMS: usize = 1024;

/// Wakes a plugin's tick thread to deliver `proxy_on_queue_ready` to its VMs.
#[derive(Default)]
pub(crate) struct Waker {
    pending: Mutex<Vec<(usize, u32)>>,
    /// Answers to root contexts' HTTP calls, by VM index.
    answers: Mutex<Vec<(usize, crate::plugin::types::CalloutAnswers)>>,
    bell: Condvar,
    /// Whether any of the plugin's VMs registered a queue (its tick thread must run).
    pub(crate) registered: AtomicBool,
}

impl Waker {
    /// The deliveries due: (VM index, queue id).
    pub(crate) fn take(&self) -> Vec<(usize, u32)> {
        std::mem::take(&mut *self.pending.lock())
    }

    /// Answers to deliver to root contexts: (VM index, answers).
    pub(crate) fn take_answers(&self) -> Vec<(usize, crate::plugin::types::CalloutAnswers)> {
        std::mem::take(&mut *self.answers.lock())
    }

    /// Hands a VM's root context the answers to its HTTP calls, on the tick thread.
    pub(crate) fn answered(&self, vm: usize, answers: crate::plugin::types::CalloutAnswers) {
        self.answers.lock().push((vm, answers));
        let _pending = self.pending.lock();
        self.bell.notify_one();
    }

    /// Marks that a queue was registered, so the tick thread runs.
    pub(crate) fn note_registered(&self) {
        self.registered.store(true, Ordering::Relaxed);
    }

    /// Waits up to `most` for a delivery to be due.
    pub(crate) fn wait(&self, most: Duration) {
        let mut pending = self.pending.lock();
        if pending.is_empty() && self.answers.lock().is_empty() {
            self.bell.wait_for(&mut pending, most);
        }
    }

    fn ring(&self, vm: usize, queue: u32) {
        let mut pending = self.pending.lock();
        if !pending.contains(&(vm, queue)) {
            pending.push((vm, queue));
        }
        self.bell.notify_one();
    }
}

/// Who is told a queue has items: a VM of a plugin.
#[derive(Clone)]
pub(crate) struct Owner {
    pub(crate) waker: Weak<Waker>,
    pub(crate) vm: usize,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    owner: Owner,
}

#[derive(Default)]
struct Inner {
    ids: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    next: u32,
}

/// A sidecar's shared queues.
#[derive(Default)]
pub(crate) struct Queues {
    inner: Mutex<Inner>,
}

/// Why a queue operation failed.
pub(crate) enum QueueError {
    /// No such queue.
    NotFound,
    /// The queue, or the table of queues, is full.
    Full,
}

impl Queues {
    /// Registers (or takes over) the queue `name` of VM id `vm_id` for `owner`.
    pub(crate) fn register(
        &self,
        vm_id: &str,
        name: &str,
        owner: Owner,
    ) -> Result<u32, QueueError> {
        let mut inner = self.inner.lock();
        if let Some(&id) = inner.ids.get(&(vm_id.to_string(), name.to_string())) {
            if let Some(q) = inner.queues.get_mut(&id) {
                q.owner = owner;
            }
            return Ok(id);
        }
        if inner.queues.len() >= MAX_QUEUES {
            return Err(QueueError::Full);
        }
        inner.next += 1;
        let id = inner.next;
        inner.ids.insert((vm_id.to_string(), name.to_string()), id);
        inner.queues.insert(
            id,
            Queue {
                items: VecDeque::new(),
                owner,
            },
        );
        Ok(id)
    }

    /// The id of a registered queue.
    pub(crate) fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        let inner = self.inner.lock();
        inner
            .ids
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
    }

    /// Adds an item and tells the queue's owner.
    pub(crate) fn enqueue(&self, id: u32, item: Vec<u8>) -> Result<(), QueueError> {
        let owner = {
            let mut inner = self.inner.lock();
            let q = inner.queues.get_mut(&id).ok_or(QueueError::NotFound)?;
            if q.items.len() >= MAX_ITEMS {
                return Err(QueueError::Full);
            }
            q.items.push_back(item);
            q.owner.clone()
        };
        if let Some(waker) = owner.waker.upgrade() {
            waker.ring(owner.vm, id);
        }
        Ok(())
    }

    /// The oldest item, or none when the queue is empty.
    pub(crate) fn dequeue(&self, id: u32) -> Result<Option<Vec<u8>>, QueueError> {
        let mut inner = self.inner.lock();
        let q = inner.queues.get_mut(&id).ok_or(QueueError::NotFound)?;
        Ok(q.items.pop_front())
    }
}
