//! The journal: events the executor awaits before going on.

use crate::events::Event;

/// Records events durably while a run goes on (a run store behind it).
///
/// Unlike an [`EventSink`](crate::EventSink), the executor *awaits* a journal: a task starts only after its
/// start was recorded, so a resumed run knows which tasks may have run. Output lines are not
/// journaled.
#[async_trait::async_trait]
pub trait Journal: Send + Sync {
    /// Records one event. An error on a task's start fails that task without running it;
    /// errors on other events are logged and the run goes on.
    async fn record(&self, event: &Event) -> Result<(), crate::BoxError>;
}
