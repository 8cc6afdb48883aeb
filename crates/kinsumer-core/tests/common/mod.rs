//! What several of these tests share: a log sink that keeps every line a test's consumer logs.

use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;
use tracing_subscriber::fmt::format::FmtSpan;

/// A log sink for one test: every event (and span close, when asked), as text.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Everything logged so far, one string.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }

    /// Everything logged so far, line by line.
    #[allow(dead_code)] // not every test file reads lines
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
}

/// Captures what this thread logs at `level` and above (a current-thread runtime's tasks
/// included) until the guard drops; `spans` adds a line as each span closes.
pub fn capture_logs(level: tracing::Level, spans: FmtSpan) -> (Captured, DefaultGuard) {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(level)
        .with_span_events(spans)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}
