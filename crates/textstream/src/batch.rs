//! Batches: one `put` carrying a row of ids for each of B sequences, fanned out
//! to B independent streams that each end on their own.

use crate::error::BatchError;
use crate::streamer::{FinishReason, Streamer};

/// B streamers driven together, as `generate` with batch size B drives them.
///
/// A row whose streamer closes (its consumer left, its stop string matched) is
/// skipped from then on; [`is_open`](Self::is_open) tells the generation loop
/// which rows still need tokens.
///
/// ```
/// # use textstream::{batch, BatchStreamer, TextIteratorStreamer, StreamOptions, Streamer, Detokenizer, TokenDecoder, DecodeError};
/// # struct Chars;
/// # impl TokenDecoder for Chars {
/// #     fn decode(&self, ids: &[u32], _: bool) -> Result<String, DecodeError> {
/// #         Ok(ids.iter().filter_map(|&id| char::from_u32(id)).collect())
/// #     }
/// # }
/// let tokenizer = Detokenizer::new(Chars);
/// let (mut producers, streams) = batch(2, || TextIteratorStreamer::new(tokenizer.clone(), StreamOptions::default()));
/// producers.put(&[&[u32::from('a')], &[u32::from('b')]]).unwrap();
/// producers.finish_row(0, textstream::FinishReason::Stop);
/// producers.put(&[&[], &[u32::from('c')]]).unwrap();
/// producers.end();
/// let texts: Vec<String> = streams.into_iter().map(|s| s.map(Result::unwrap).collect()).collect();
/// assert_eq!(texts, ["a", "bc"]);
/// ```
#[derive(Debug)]
pub struct BatchStreamer<S> {
    rows: Vec<S>,
    open: Vec<bool>,
}

/// Makes `size` producer/consumer pairs with `make` and gathers the producers
/// into one [`BatchStreamer`].
pub fn batch<S: Streamer, C>(
    size: usize,
    mut make: impl FnMut() -> (S, C),
) -> (BatchStreamer<S>, Vec<C>) {
    let (rows, consumers): (Vec<S>, Vec<C>) = (0..size).map(|_| make()).unzip();
    (BatchStreamer::new(rows), consumers)
}

impl<S: Streamer> BatchStreamer<S> {
    /// Drives these streamers, row `i` feeding `streamers[i]`.
    pub fn new(streamers: Vec<S>) -> Self {
        let open = vec![true; streamers.len()];
        BatchStreamer {
            rows: streamers,
            open,
        }
    }

    /// The batch size.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Whether row `i` still takes ids.
    pub fn is_open(&self, i: usize) -> bool {
        self.open.get(i).copied().unwrap_or(false)
    }

    /// How many rows still take ids; 0 means generation can stop.
    pub fn open_rows(&self) -> usize {
        self.open.iter().filter(|&&open| open).count()
    }

    /// Puts one row of ids per sequence (closed rows are skipped) and returns
    /// how many rows are still open.
    pub fn put(&mut self, rows: &[&[u32]]) -> Result<usize, BatchError> {
        if rows.len() != self.rows.len() {
            return Err(BatchError::WrongSize {
                expected: self.rows.len(),
                got: rows.len(),
            });
        }
        for ((streamer, open), ids) in self.rows.iter_mut().zip(&mut self.open).zip(rows) {
            if *open && streamer.put(ids).is_err() {
                *open = false;
            }
        }
        Ok(self.open_rows())
    }

    /// Puts one token (with its log-probability) per open row; `tokens[i]` is
    /// ignored for closed rows.
    pub fn put_tokens(&mut self, tokens: &[(u32, Option<f32>)]) -> Result<usize, BatchError> {
        if tokens.len() != self.rows.len() {
            return Err(BatchError::WrongSize {
                expected: self.rows.len(),
                got: tokens.len(),
            });
        }
        for ((streamer, open), &(id, logprob)) in
            self.rows.iter_mut().zip(&mut self.open).zip(tokens)
        {
            if *open && streamer.put_token(id, logprob).is_err() {
                *open = false;
            }
        }
        Ok(self.open_rows())
    }

    /// Ends row `i` with `reason` (e.g. it produced its end-of-sequence token).
    pub fn finish_row(&mut self, i: usize, reason: FinishReason) {
        if self.is_open(i) {
            self.rows[i].finish(reason);
            self.open[i] = false;
        }
    }

    /// Ends every open row with `reason`.
    pub fn finish(&mut self, reason: FinishReason) {
        for i in 0..self.rows.len() {
            self.finish_row(i, reason.clone());
        }
    }

    /// Ends every open row normally.
    pub fn end(&mut self) {
        self.finish(FinishReason::Stop);
    }

    /// Ends every open row with an error (its message, shared by all rows).
    pub fn fail(&mut self, error: &(dyn std::error::Error + Send + Sync)) {
        for (streamer, open) in self.rows.iter_mut().zip(&mut self.open) {
            if *open {
                streamer.fail(error.to_string().into());
                *open = false;
            }
        }
    }

    /// The streamer of row `i`.
    pub fn row(&mut self, i: usize) -> Option<&mut S> {
        self.rows.get_mut(i)
    }
}

impl<S> From<BatchStreamer<S>> for Vec<S> {
    fn from(batch: BatchStreamer<S>) -> Vec<S> {
        batch.rows
    }
}
