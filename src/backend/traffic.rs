//! Host <-> device traffic, counted by each device runtime.

use std::sync::atomic::{AtomicU64, Ordering};

/// Host <-> device traffic of a backend since its device runtime was made.
///
/// A synchronisation is the host waiting for the whole queue of the stream to drain: a stream
/// synchronise, or a blocking download (which synchronises). Waiting on an event recorded after one
/// asynchronous copy is not a synchronisation of the stream; it is part of that download.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostTraffic {
    pub uploads: u64,
    pub upload_bytes: u64,
    pub downloads: u64,
    pub download_bytes: u64,
    pub synchronizations: u64,
}

impl HostTraffic {
    /// The traffic between `earlier` and `self`.
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

/// The counters a runtime bumps.
#[derive(Debug, Default)]
pub struct TrafficMeter {
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
    downloads: AtomicU64,
    download_bytes: AtomicU64,
    synchronizations: AtomicU64,
}

impl TrafficMeter {
    pub fn upload(&self, bytes: usize) {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.upload_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn download(&self, bytes: usize) {
        self.downloads.fetch_add(1, Ordering::Relaxed);
        self.download_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn synchronization(&self) {
        self.synchronizations.fetch_add(1, Ordering::Relaxed);
    }

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
