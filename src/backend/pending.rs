//! A scalar on its way from the device to the host.

use crate::error::Result;

/// A one-element f32 tensor being copied to the host ([`Backend::read_scalar`](super::Backend)):
/// queued behind the work that computes it, read with [`wait`](Self::wait) once the host needs it,
/// so that the host can queue more work meanwhile.
pub struct PendingScalar(Inner);

enum Inner {
    Ready(f32),
    Copying(Box<dyn FnOnce() -> Result<f32> + Send>),
}

impl PendingScalar {
    /// A value already on the host (the CPU's).
    pub fn ready(value: f32) -> Self {
        PendingScalar(Inner::Ready(value))
    }

    /// A copy in flight; `finish` waits for it and returns the value.
    pub fn copying(finish: impl FnOnce() -> Result<f32> + Send + 'static) -> Self {
        PendingScalar(Inner::Copying(Box::new(finish)))
    }

    /// The value, once the copy has landed (waiting for it, and for nothing queued after it).
    pub fn wait(self) -> Result<f32> {
        match self.0 {
            Inner::Ready(value) => Ok(value),
            Inner::Copying(finish) => finish(),
        }
    }
}

impl std::fmt::Debug for PendingScalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Ready(value) => write!(f, "PendingScalar({value})"),
            Inner::Copying(_) => f.write_str("PendingScalar(copying)"),
        }
    }
}
