//! Counting what crosses between host and device: the copies that cost PCIe bandwidth and, above
//! all, the times the host stops to wait for the device, which empty the GPU's queue and leave it
//! idle until the host queues more work.

use std::sync::atomic::{AtomicU64, Ordering};

/// Host <-> device traffic of a backend since it was made: copies each way, their bytes, and
/// synchronisations.
///
/// A synchronisation is the host waiting for the whole queue of the stream to drain: a stream or
/// device synchronize, or a blocking download (which has to synchronise to hand back its bytes).
/// Waiting on an event recorded right after one asynchronous copy is *not* a synchronisation of
/// the stream: work queued after that copy keeps running, so the wait is counted as part of that
/// download only.
///
/// Subtract two snapshots with [`since`](Self::since) to get the traffic of a span of work, e.g.
/// one training step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostTraffic {
    /// Host-to-device copies.
    pub uploads: u64,
    pub upload_bytes: u64,
    /// Device-to-host copies, blocking or asynchronous.
    pub downloads: u64,
    pub download_bytes: u64,
    /// Times the host waited for the stream's whole queue to drain.
    pub synchronizations: u64,
}

impl HostTraffic {
    /// The traffic between `earlier` and `self`, field by field; a counter that went backwards
    /// (snapshots of different backends) gives 0 rather than wrapping.
    pub fn since(&self, earlier: &HostTraffic) -> HostTraffic {
        HostTraffic {
            uploads: self.uploads.saturating_sub(earlier.uploads),
            upload_bytes: self.upload_bytes.saturating_sub(earlier.upload_bytes),
            downloads: self.downloads.saturating_sub(earlier.downloads),
            download_bytes: self.download_bytes.saturating_sub(earlier.download_bytes),
            synchronizations: self
                .synchronizations
                .saturating_sub(earlier.synchronizations),
        }
    }
}

/// The counters a runtime bumps as it copies and waits. Each counter is independent, so relaxed
/// atomics suffice: a snapshot taken while another thread copies may see one field of a copy
/// before the other, which no reader of these figures depends on.
#[derive(Debug, Default)]
pub struct TrafficMeter {
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
    downloads: AtomicU64,
    download_bytes: AtomicU64,
    synchronizations: AtomicU64,
}

impl TrafficMeter {
    /// One host-to-device copy of `bytes`.
    pub fn upload(&self, bytes: usize) {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.upload_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// One device-to-host copy of `bytes` (its synchronisation, if it blocks, is counted apart).
    pub fn download(&self, bytes: usize) {
        self.downloads.fetch_add(1, Ordering::Relaxed);
        self.download_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The host waited for the stream's whole queue.
    pub fn synchronization(&self) {
        self.synchronizations.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HostTraffic {
        HostTraffic {
            uploads: self.uploads.load(Ordering::Relaxed),
            upload_bytes: self.upload_bytes.load(Ordering::Relaxed),
            downloads: self.downloads.load(Ordering::Relaxed),
            download_bytes: self.download_bytes.load(Ordering::Relaxed),
            synchronizations: self.synchronizations.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_saturating_difference() {
        let meter = TrafficMeter::default();
        meter.upload(10);
        let before = meter.snapshot();
        meter.upload(3);
        meter.download(4);
        meter.synchronization();
        let span = meter.snapshot().since(&before);
        assert_eq!(
            span,
            HostTraffic {
                uploads: 1,
                upload_bytes: 3,
                downloads: 1,
                download_bytes: 4,
                synchronizations: 1,
            }
        );
        assert_eq!(before.since(&meter.snapshot()), HostTraffic::default());
    }
}
