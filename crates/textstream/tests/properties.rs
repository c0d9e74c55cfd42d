//! Property tests of the invariants: exactness over every split, UTF-8
//! safety, eager release, stop strings and batch fan-out, for each tokenizer
//! family and both decoding paths.

mod common;

use proptest::prelude::*;
use textstream::{
    batch, Detokenizer, FinishReason, IncrementalDecoder, Policy, StopMatch, StopMatcher,
    StreamOptions, Streamer, TextIteratorStreamer,
};
use tokenizers::Tokenizer;

/// Every family with the path it must take: (name, handle, tokenizer, concatenative).
fn families() -> Vec<(&'static str, Detokenizer, &'static Tokenizer, bool)> {
    vec![
        (
            "byte-level",
            Detokenizer::new(common::byte_level().clone()),
            common::byte_level(),
            true,
        ),
        (
            "byte-level windowed",
            Detokenizer::windowed(common::byte_level().clone()),
            common::byte_level(),
            false,
        ),
        (
            "sentencepiece",
            Detokenizer::new(common::sentencepiece().clone()),
            common::sentencepiece(),
            true,
        ),
        (
            "metaspace",
            Detokenizer::new(common::metaspace().clone()),
            common::metaspace(),
            false,
        ),
    ]
}

/// Streams `puts` through a decoder and returns the chunks it released.
fn decode_incrementally(detokenizer: &Detokenizer, puts: &[&[u32]], skip: bool) -> Vec<String> {
    let mut decoder = IncrementalDecoder::new(detokenizer.clone(), skip);
    let mut chunks = Vec::new();
    for ids in puts {
        let mut text = String::new();
        decoder.push_all(ids, &mut text).expect("decodes");
        chunks.push(text);
    }
    let mut text = String::new();
    decoder.flush(&mut text).expect("flushes");
    chunks.push(text);
    chunks
}

fn multilingual_text() -> impl Strategy<Value = String> {
    let pool: Vec<char> = common::CORPUS.concat().chars().collect();
    prop::collection::vec(prop::sample::select(pool), 0..80)
        .prop_map(|chars| chars.into_iter().collect())
}

/// The stop a one-shot search finds: the one completed first, the longer on a tie.
fn reference_stop<'a>(text: &str, stops: &'a [String]) -> Option<(usize, &'a String)> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|at| (at, s)))
        .min_by_key(|&(at, s)| (at + s.len(), std::cmp::Reverse(s.len())))
}

#[test]
fn families_take_the_expected_path() {
    for (name, detokenizer, _, concatenative) in families() {
        let decoder = IncrementalDecoder::new(detokenizer, false);
        assert_eq!(decoder.is_concatenative(), concatenative, "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any ids (unknown ones included), any split: the chunks concatenate to
    /// the one-shot decode.
    #[test]
    fn exact_for_random_ids_and_splits(
        raw in prop::collection::vec(any::<u32>(), 0..60),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        skip in any::<bool>(),
    ) {
        for (name, detokenizer, tokenizer, _) in families() {
            let vocab = tokenizer.get_vocab_size(true) as u32 + 3;
            let ids: Vec<u32> = raw.iter().map(|id| id % vocab).collect();
            let expected = tokenizer.decode(&ids, skip).unwrap();
            let chunks = decode_incrementally(&detokenizer, &common::split(&ids, &cuts), skip);
            prop_assert_eq!(chunks.concat(), expected, "{} ids {:?}", name, ids);
        }
    }

    /// Real text in many scripts, one id per put: nothing released is ever
    /// U+FFFD, the text released so far is a prefix of the final text, and on
    /// the byte-level path it is all of the decoded text that is complete.
    #[test]
    fn utf8_safe_and_eager(text in multilingual_text()) {
        for (name, detokenizer, tokenizer, _) in families() {
            let ids = common::encode(tokenizer, &text);
            let expected = tokenizer.decode(&ids, false).unwrap();
            let mut decoder = IncrementalDecoder::new(detokenizer.clone(), false);
            let mut released = String::new();
            for (i, &id) in ids.iter().enumerate() {
                decoder.push(id, &mut released).unwrap();
                prop_assert!(expected.starts_with(&released), "{}: {:?} not a prefix", name, released);
                if name == "byte-level" && !expected.contains('\u{FFFD}') {
                    let so_far = tokenizer.decode(&ids[..=i], false).unwrap();
                    prop_assert_eq!(&released, so_far.trim_end_matches('\u{FFFD}'));
                }
            }
            decoder.flush(&mut released).unwrap();
            prop_assert_eq!(&released, &expected, "{}", name);
            if !expected.contains('\u{FFFD}') {
                prop_assert!(!released.contains(char::REPLACEMENT_CHARACTER), "U+FFFD released");
            }
        }
    }

    /// Through the iterator streamer on a real thread, with either policy and
    /// skip_prompt: the text equals the decode of the generated ids, and the
    /// Words policy releases only at word boundaries.
    #[test]
    fn streamer_is_exact(
        prompt in multilingual_text(),
        answer in multilingual_text(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        words in any::<bool>(),
    ) {
        for (name, detokenizer, tokenizer, _) in families() {
            let prompt_ids = common::encode(tokenizer, &prompt);
            let ids = common::encode(tokenizer, &answer);
            let policy = if words { Policy::Words } else { Policy::Eager };
            let options = StreamOptions::default().skip_prompt(true).policy(policy);
            let (mut producer, stream) = TextIteratorStreamer::new(detokenizer.clone(), options);
            let puts: Vec<Vec<u32>> = common::split(&ids, &cuts).into_iter().map(<[u32]>::to_vec).collect();
            let worker = std::thread::spawn(move || {
                producer.put(&prompt_ids).unwrap();
                for ids in puts {
                    producer.put(&ids).unwrap();
                }
                producer.end();
            });
            let chunks: Vec<String> = stream.map(Result::unwrap).collect();
            worker.join().unwrap();
            prop_assert_eq!(chunks.concat(), tokenizer.decode(&ids, false).unwrap(), "{}", name);
            prop_assert!(chunks.iter().all(|c| !c.is_empty()));
        }
    }

    /// Stop strings split anywhere: the text ends right before the stop string
    /// that completes first, whatever the chunking.
    #[test]
    fn stop_strings_across_chunks(
        text in multilingual_text(),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
        picks in prop::collection::vec((any::<usize>(), 1usize..6), 1..4),
    ) {
        let chars: Vec<char> = text.chars().collect();
        let stops: Vec<String> = picks
            .iter()
            .map(|&(start, len)| {
                if chars.is_empty() { return "zz".to_string(); }
                let start = start % chars.len();
                chars[start..(start + len).min(chars.len())].iter().collect()
            })
            .collect();
        let mut matcher = StopMatcher::new(stops.clone());
        let mut out = String::new();
        let mut matched = None;
        let mut cut_chars: Vec<usize> = cuts.iter().map(|c| c % (chars.len() + 1)).collect();
        cut_chars.sort_unstable();
        let mut start = 0;
        for end in cut_chars.into_iter().chain([chars.len()]) {
            let piece: String = chars[start.min(end)..end].iter().collect();
            start = start.max(end);
            if let StopMatch::Matched(stop) = matcher.feed(&piece, &mut out) {
                matched = Some(stop);
                break;
            }
        }
        if matched.is_none() {
            matcher.flush(&mut out);
        }
        match reference_stop(&text, &stops) {
            Some((at, stop)) => {
                prop_assert_eq!(&out, &text[..at]);
                prop_assert_eq!(matched.as_ref(), Some(stop));
            }
            None => {
                prop_assert_eq!(&out, &text);
                prop_assert_eq!(matched, None);
            }
        }
    }

    /// Stop strings through a token stream: the producer learns at once, the
    /// consumer gets the text before the stop string and the finish reason.
    #[test]
    fn stop_strings_through_tokens(text in multilingual_text(), start in any::<usize>(), len in 1usize..5) {
        let tokenizer = common::byte_level();
        let ids = common::encode(tokenizer, &text);
        let decoded = tokenizer.decode(&ids, false).unwrap();
        let chars: Vec<char> = decoded.chars().collect();
        prop_assume!(!chars.is_empty());
        let start = start % chars.len();
        let stop: String = chars[start..(start + len).min(chars.len())].iter().collect();
        let options = StreamOptions::default().stop([stop.clone()]);
        let (mut producer, mut stream) = TextIteratorStreamer::new(tokenizer.clone(), options);
        let mut stopped_at = None;
        for (i, &id) in ids.iter().enumerate() {
            if producer.put(&[id]).is_err() {
                stopped_at = Some(i);
                break;
            }
        }
        producer.end();
        let text_out: String = stream.by_ref().map(Result::unwrap).collect();
        let at = decoded.find(&stop).expect("the stop string is in the text");
        prop_assert_eq!(&text_out, &decoded[..at]);
        prop_assert_eq!(stream.finish_reason(), Some(&FinishReason::StopString(stop.clone())));
        // The put that completed the stop string was the one refused.
        let i = stopped_at.expect("generation was told to stop");
        prop_assert!(tokenizer.decode(&ids[..=i], false).unwrap().contains(&stop));
        prop_assert!(!tokenizer.decode(&ids[..i], false).unwrap().contains(&stop));
    }

    /// A batch fans out to independent streams, each ending on its own step.
    #[test]
    fn batch_fans_out(
        rows in prop::collection::vec((prop::collection::vec(0u32..700, 0..30), any::<usize>()), 1..5),
    ) {
        let tokenizer = common::byte_level();
        let detokenizer = Detokenizer::new(tokenizer.clone());
        let (mut producers, streams) = batch(rows.len(), || {
            TextIteratorStreamer::new(detokenizer.clone(), StreamOptions::default())
        });
        let ends: Vec<usize> = rows.iter().map(|(ids, end)| end % (ids.len() + 1)).collect();
        let steps = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        for step in 0..=steps {
            let row_ids: Vec<&[u32]> = rows
                .iter()
                .zip(&ends)
                .map(|((ids, _), &end)| if step < end { &ids[step..=step] } else { &[][..] })
                .collect();
            producers.put(&row_ids).unwrap();
            for (i, &end) in ends.iter().enumerate() {
                if step + 1 == end || end == 0 {
                    producers.finish_row(i, FinishReason::Length);
                }
            }
        }
        producers.end();
        for (((ids, _), end), stream) in rows.iter().zip(&ends).zip(streams) {
            let text: String = stream.map(Result::unwrap).collect();
            prop_assert_eq!(text, tokenizer.decode(&ids[..*end], false).unwrap());
        }
    }
}
