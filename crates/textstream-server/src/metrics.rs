//! Counters the server keeps and `/metrics` renders as Prometheus text:
//! requests by status code, open connections, active streams, queue depth, busy workers,
//! tokens generated, cancelled generations and time to first token.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use textstream_engine::scheduler::SchedulerStats;

/// Upper bounds of the time-to-first-token histogram buckets, in seconds:
/// from a warm tiny model (milliseconds) to a long prompt on a CPU (seconds).
pub const TTFT_BUCKETS_SECS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Microseconds per second, for the histogram's sum.
const MICROS_PER_SEC: f64 = 1e6;

/// The server's counters; shared by handlers and workers.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by HTTP status code.
    requests: Mutex<BTreeMap<u16, u64>>,
    /// Connections now open (HTTP/1.1, served by [`crate::serve`]).
    pub(crate) open_connections: AtomicU64,
    /// Responses now reading a token stream (streaming or not).
    pub(crate) active_streams: AtomicU64,
    /// Jobs waiting for a worker.
    pub(crate) queue_depth: AtomicU64,
    /// Workers now generating.
    pub(crate) busy_workers: AtomicU64,
    /// Tokens generated, over all requests.
    pub(crate) tokens_generated: AtomicU64,
    /// Generations stopped (or skipped) because the client left.
    pub(crate) cancelled: AtomicU64,
    /// Generations that failed or panicked.
    pub(crate) failed: AtomicU64,
    /// Time-to-first-token counts per bucket (not cumulative).
    ttft_buckets: [AtomicU64; TTFT_BUCKETS_SECS.len()],
    /// Observations above the last bucket.
    ttft_overflow: AtomicU64,
    /// Sum of all observations, in microseconds.
    ttft_sum_micros: AtomicU64,
}

impl Metrics {
    /// Counts a response with `status`.
    pub(crate) fn record_status(&self, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests.entry(status).or_default() += 1;
    }

    /// Records a time to first token.
    pub(crate) fn observe_ttft(&self, ttft: Duration) {
        let secs = ttft.as_secs_f64();
        match TTFT_BUCKETS_SECS.iter().position(|&bound| secs <= bound) {
            Some(i) => self.ttft_buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.ttft_overflow.fetch_add(1, Ordering::Relaxed),
        };
        let micros = u64::try_from(ttft.as_micros()).unwrap_or(u64::MAX);
        self.ttft_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Workers now generating.
    pub fn busy_workers(&self) -> u64 {
        self.busy_workers.load(Ordering::Relaxed)
    }

    /// Generations stopped or skipped because the client left.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Writing to a String cannot fail; the results are ignored.
        let _ = writeln!(
            out,
            "# HELP textstream_http_requests_total HTTP responses by status code."
        );
        let _ = writeln!(out, "# TYPE textstream_http_requests_total counter");
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (code, count) in requests {
            let _ = writeln!(
                out,
                "textstream_http_requests_total{{code=\"{code}\"}} {count}"
            );
        }
        let gauges: [(&str, &str, &str, &AtomicU64); 7] = [
            (
                "textstream_open_connections",
                "gauge",
                "Client connections now open.",
                &self.open_connections,
            ),
            (
                "textstream_active_streams",
                "gauge",
                "Responses now reading a token stream.",
                &self.active_streams,
            ),
            (
                "textstream_queue_depth",
                "gauge",
                "Requests waiting for a slot in the scheduler.",
                &self.queue_depth,
            ),
            (
                "textstream_busy_workers",
                "gauge",
                "Requests now generating (sequences the scheduler runs).",
                &self.busy_workers,
            ),
            (
                "textstream_tokens_generated_total",
                "counter",
                "Tokens generated.",
                &self.tokens_generated,
            ),
            (
                "textstream_generations_cancelled_total",
                "counter",
                "Generations stopped because the client left.",
                &self.cancelled,
            ),
            (
                "textstream_generations_failed_total",
                "counter",
                "Generations that failed or panicked.",
                &self.failed,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", load(value));
        }
        let name = "textstream_time_to_first_token_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} From accepting a request to its first token."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in TTFT_BUCKETS_SECS.iter().zip(&self.ttft_buckets) {
            cumulative += load(count);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += load(&self.ttft_overflow);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = load(&self.ttft_sum_micros) as f64 / MICROS_PER_SEC;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
        out
    }
}

/// The scheduler's figures in Prometheus text: sequences in its latest
/// forward pass, passes, sequences and tokens summed over the passes (the
/// mean batch is their ratio to the passes), prompt tokens reused, and
/// prompts abandoned half read.
pub(crate) fn render_scheduler(stats: &SchedulerStats) -> String {
    let mut out = String::new();
    let block = stats.kv_block_bytes().max(1);
    let blocks = |bytes: u64| bytes.div_ceil(block);
    let total = blocks(stats.kv_budget_bytes());
    let figures: [(&str, &str, &str, u64); 15] = [
        (
            "textstream_scheduler_running",
            "gauge",
            "Sequences running in the scheduler.",
            stats.running(),
        ),
        (
            "textstream_scheduler_waiting",
            "gauge",
            "Requests the scheduler holds back for a free slot or KV memory.",
            stats.waiting(),
        ),
        (
            "textstream_kv_block_bytes",
            "gauge",
            "Bytes of one KV block (16 positions of one layer); 0 when not counted.",
            stats.kv_block_bytes(),
        ),
        (
            "textstream_kv_blocks_total",
            "gauge",
            "KV blocks the budget (--kv-memory) holds.",
            total,
        ),
        (
            "textstream_kv_blocks_used",
            "gauge",
            "KV blocks held now by running sequences and cached prefixes.",
            blocks(stats.kv_held_bytes()),
        ),
        (
            "textstream_kv_blocks_free",
            "gauge",
            "KV blocks neither held nor promised to a running sequence's worst case.",
            total.saturating_sub(stats.kv_reserved_bytes().div_ceil(block)),
        ),
        (
            "textstream_kv_memory_waits_total",
            "counter",
            "Times the next request waited for KV memory.",
            stats.memory_waits(),
        ),
        (
            "textstream_prefix_cache_hits_total",
            "counter",
            "Requests that started past a cached prefix.",
            stats.prefix_hits(),
        ),
        (
            "textstream_prefix_cache_copies_total",
            "counter",
            "Prefix-cache hits served by copying another session's blocks.",
            stats.prefix_copies(),
        ),
        (
            "textstream_batch_sequences",
            "gauge",
            "Sequences in the scheduler's latest forward pass.",
            stats.last_sequences(),
        ),
        (
            "textstream_scheduler_steps_total",
            "counter",
            "Forward passes of the scheduler.",
            stats.steps(),
        ),
        (
            "textstream_scheduler_step_sequences_total",
            "counter",
            "Sequences summed over the forward passes.",
            stats.step_sequences(),
        ),
        (
            "textstream_scheduler_step_tokens_total",
            "counter",
            "Tokens summed over the forward passes, prompt chunks included.",
            stats.step_tokens(),
        ),
        (
            "textstream_prefix_cache_reused_tokens_total",
            "counter",
            "Prompt tokens not run again: a session still held them.",
            stats.reused_tokens(),
        ),
        (
            "textstream_prefill_abandoned_total",
            "counter",
            "Requests ended while their prompt was read: the client had left.",
            stats.abandoned(),
        ),
    ];
    for (name, kind, help, value) in figures {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// Counts one active stream while it lives; dropping it (the response ended
/// or the client left) uncounts it.
#[derive(Debug)]
pub(crate) struct ActiveStream(Arc<Metrics>);

impl ActiveStream {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        metrics.active_streams.fetch_add(1, Ordering::Relaxed);
        ActiveStream(metrics)
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.active_streams.fetch_sub(1, Ordering::Relaxed);
    }
}
