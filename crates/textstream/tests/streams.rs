//! The failure semantics and consumer shapes: what each side sees when the
//! other fails, leaves, stalls or lags.

mod common;

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use textstream::{
    AsyncTextIteratorStreamer, BatchError, Closed, FinishReason, Policy, StreamError,
    StreamOptions, Streamer, TextIteratorStreamer, TextStreamer, TokenEventStream,
};

/// Long enough that a hang shows up as a timeout error, not a stuck test.
const GUARD: Duration = Duration::from_secs(20);

fn ids(text: &str) -> Vec<u32> {
    common::encode(common::byte_level(), text)
}

fn guarded() -> StreamOptions {
    StreamOptions::default().timeout(GUARD)
}

#[test]
fn producer_panic_ends_the_stream_with_an_error() {
    let (mut producer, stream) = TextIteratorStreamer::new(common::byte_level().clone(), guarded());
    let tokens = ids("partial answer");
    let worker = std::thread::spawn(move || {
        producer.put(&tokens).unwrap();
        panic!("generate() failed on the worker thread");
    });
    let items: Vec<_> = stream.collect();
    assert!(worker.join().is_err());
    assert_eq!(items[0].as_deref().unwrap(), "partial answer");
    assert!(
        matches!(items.last(), Some(Err(StreamError::ProducerDropped))),
        "{items:?}"
    );
}

#[test]
fn producer_error_reaches_the_consumer() {
    let (mut producer, mut stream) =
        TextIteratorStreamer::new(common::byte_level().clone(), guarded());
    producer.put(&ids("so far")).unwrap();
    producer.fail("out of memory".into());
    assert_eq!(stream.next().unwrap().unwrap(), "so far");
    match stream.next() {
        Some(Err(StreamError::Producer(error))) => assert_eq!(error.to_string(), "out of memory"),
        other => panic!("expected the producer's error, got {other:?}"),
    }
    assert!(stream.next().is_none());
    assert_eq!(producer.put(&ids("more")), Err(Closed::Ended));
}

#[test]
fn dropped_consumer_stops_the_producer_at_the_next_put() {
    let (mut producer, stream) = TextIteratorStreamer::new(common::byte_level().clone(), guarded());
    producer.put(&ids("hello")).unwrap();
    drop(stream);
    assert!(producer.is_consumer_gone());
    assert_eq!(producer.put(&ids(" world")), Err(Closed::ConsumerGone));
}

#[test]
fn dropped_async_consumer_stops_a_worker_within_one_token() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let puts = Arc::new(AtomicUsize::new(0));
    let (mut producer, mut stream) =
        AsyncTextIteratorStreamer::new(common::byte_level().clone(), guarded());
    let counted = Arc::clone(&puts);
    let worker = runtime.spawn_blocking(move || {
        for id in ids("a b c d e f g h i j k l m n o p").into_iter().cycle() {
            counted.fetch_add(1, Ordering::SeqCst);
            if producer.put(&[id]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    runtime.block_on(async {
        stream.next().await.unwrap().unwrap();
        drop(stream);
    });
    let at_drop = puts.load(Ordering::SeqCst);
    runtime.block_on(worker).unwrap();
    assert!(
        puts.load(Ordering::SeqCst) <= at_drop + 1,
        "more than one put after the drop"
    );
}

#[test]
fn timeout_is_an_error_and_the_stream_goes_on() {
    let options = StreamOptions::default().timeout(Duration::from_millis(50));
    let (mut producer, mut stream) =
        TextIteratorStreamer::new(common::byte_level().clone(), options);
    assert!(matches!(stream.next(), Some(Err(StreamError::Timeout(_)))));
    producer.put(&ids("late")).unwrap();
    producer.end();
    assert_eq!(stream.next().unwrap().unwrap(), "late");
    assert!(stream.next().is_none());
    assert_eq!(stream.finish_reason(), Some(&FinishReason::Stop));
}

#[test]
fn async_timeout_without_a_runtime() {
    let options = StreamOptions::default().timeout(Duration::from_millis(50));
    let (mut producer, mut stream) =
        AsyncTextIteratorStreamer::new(common::byte_level().clone(), options);
    futures::executor::block_on(async {
        assert!(matches!(
            stream.next().await,
            Some(Err(StreamError::Timeout(_)))
        ));
        producer.put(&ids("then text")).unwrap();
        producer.finish(FinishReason::Length);
        assert_eq!(stream.next().await.unwrap().unwrap(), "then text");
        assert!(stream.next().await.is_none());
        assert_eq!(stream.finish_reason(), Some(&FinishReason::Length));
    });
}

#[test]
fn async_stream_under_tokio_with_spawn_blocking() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let text = "中文 and ไทย and 👩‍👩‍👧‍👦 streamed from a worker";
    let tokens = ids(text);
    let (mut producer, mut stream) =
        AsyncTextIteratorStreamer::new(common::byte_level().clone(), guarded());
    let received = runtime.block_on(async move {
        let worker = tokio::task::spawn_blocking(move || {
            for id in tokens {
                producer.put(&[id]).unwrap();
            }
            producer.end();
        });
        let mut received = String::new();
        while let Some(chunk) = stream.next().await {
            received += &chunk.unwrap();
        }
        worker.await.unwrap();
        received
    });
    assert_eq!(received, text);
}

#[test]
fn slow_consumer_gets_one_coalesced_chunk() {
    let (mut producer, mut stream) =
        TextIteratorStreamer::new(common::byte_level().clone(), guarded());
    let tokens = ids(&"many small tokens ".repeat(100));
    for &id in &tokens {
        producer.put(&[id]).unwrap();
    }
    producer.end();
    let first = stream.next().unwrap().unwrap();
    assert_eq!(first, "many small tokens ".repeat(100));
    assert!(stream.next().is_none());
}

#[test]
fn bounded_stream_blocks_the_producer_until_read() {
    let options = guarded().bound(16);
    let (mut producer, mut stream) =
        TextIteratorStreamer::new(common::byte_level().clone(), options);
    let text = "x".repeat(200);
    let tokens = ids(&text);
    let total = tokens.len();
    let sent = Arc::new(AtomicUsize::new(0));
    let progress = Arc::clone(&sent);
    let worker = std::thread::spawn(move || {
        for id in tokens {
            producer.put(&[id]).unwrap();
            progress.fetch_add(1, Ordering::SeqCst);
        }
        producer.end();
    });
    // Without a reader the producer stops as soon as 16 bytes are pending.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        sent.load(Ordering::SeqCst) < total,
        "the producer was not held back"
    );
    let mut received = String::new();
    for chunk in stream.by_ref() {
        let chunk = chunk.unwrap();
        assert!(
            chunk.len() <= 16 + 16,
            "a chunk of {} bytes passed the bound",
            chunk.len()
        );
        received += &chunk;
    }
    worker.join().unwrap();
    assert_eq!(received, text);
}

#[test]
fn text_streamer_writes_and_flushes() {
    struct Recorder {
        written: Vec<u8>,
        flushes: usize,
    }
    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.flushes += 1;
            Ok(())
        }
    }
    let recorder = Recorder {
        written: Vec::new(),
        flushes: 0,
    };
    let mut streamer = TextStreamer::with_writer(
        common::byte_level().clone(),
        StreamOptions::default(),
        recorder,
    );
    for id in ids("written as it comes") {
        streamer.put(&[id]).unwrap();
    }
    streamer.end();
    let recorder = streamer.into_inner();
    assert_eq!(
        String::from_utf8(recorder.written).unwrap(),
        "written as it comes"
    );
    assert!(recorder.flushes > 1);
}

#[test]
fn text_streamer_reports_a_broken_writer() {
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "pipe closed"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut streamer = TextStreamer::with_writer(
        common::byte_level().clone(),
        StreamOptions::default(),
        Broken,
    );
    assert_eq!(streamer.put(&ids("text")), Err(Closed::ConsumerGone));
    assert_eq!(streamer.error().unwrap().kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(streamer.put(&ids("more")), Err(Closed::ConsumerGone));
}

#[test]
fn eager_streams_thai_per_token_and_words_waits_for_a_space() {
    let text = "ภาษาไทยไม่มีช่องว่าง";
    let tokens = ids(text);
    // Words: nothing before the end, since Thai has no spaces.
    let (mut producer, mut stream) = TextIteratorStreamer::new(
        common::byte_level().clone(),
        StreamOptions::default()
            .policy(Policy::Words)
            .timeout(Duration::from_millis(20)),
    );
    for &id in &tokens {
        producer.put(&[id]).unwrap();
    }
    assert!(matches!(stream.next(), Some(Err(StreamError::Timeout(_)))));
    producer.end();
    assert_eq!(stream.next().unwrap().unwrap(), text);
    // Eager: the first whole character arrives before the second token is put.
    let (mut producer, mut stream) =
        TextIteratorStreamer::new(common::byte_level().clone(), guarded());
    let mut released = String::new();
    for &id in &tokens {
        producer.put(&[id]).unwrap();
        if common::byte_level()
            .decode(&[id], false)
            .unwrap()
            .contains('\u{FFFD}')
        {
            continue;
        }
        released += &stream.next().unwrap().unwrap();
        assert!(text.starts_with(&released));
    }
    assert!(!released.is_empty());
}

#[test]
fn words_policy_releases_at_spaces_newlines_and_cjk() {
    let options = StreamOptions::default()
        .policy(Policy::Words)
        .timeout(Duration::from_millis(20));
    let (mut producer, mut stream) =
        TextIteratorStreamer::new(common::byte_level().clone(), options);
    producer.put(&ids("Hello wor")).unwrap();
    assert_eq!(stream.next().unwrap().unwrap(), "Hello ");
    producer.put(&ids("ld\n")).unwrap();
    assert_eq!(stream.next().unwrap().unwrap(), "world\n");
    producer.put(&ids("中文")).unwrap();
    assert_eq!(stream.next().unwrap().unwrap(), "中文");
    producer.put(&ids("tail")).unwrap();
    assert!(matches!(stream.next(), Some(Err(StreamError::Timeout(_)))));
    producer.end();
    assert_eq!(stream.next().unwrap().unwrap(), "tail");
}

#[test]
fn token_events_carry_ids_logprobs_and_the_finish_reason() {
    let (mut producer, mut stream) =
        TokenEventStream::new(common::byte_level().clone(), guarded().skip_prompt(true));
    producer.put(&ids("prompt")).unwrap();
    let answer = ids("ok 中");
    for (i, &id) in answer.iter().enumerate() {
        producer.put_token(id, Some(-(i as f32))).unwrap();
    }
    producer.finish(FinishReason::Length);
    let events: Vec<_> = stream.blocking_iter().map(Result::unwrap).collect();
    let all_ids: Vec<u32> = events.iter().flat_map(|e| e.ids.clone()).collect();
    assert_eq!(all_ids, answer);
    let logprobs: Vec<Option<f32>> = events.iter().flat_map(|e| e.logprobs.clone()).collect();
    assert_eq!(
        logprobs,
        (0..answer.len())
            .map(|i| Some(-(i as f32)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        events.iter().map(|e| e.text.as_str()).collect::<String>(),
        "ok 中"
    );
    assert_eq!(
        events.last().unwrap().finish_reason,
        Some(FinishReason::Length)
    );
    assert!(events[..events.len() - 1]
        .iter()
        .all(|e| e.finish_reason.is_none()));
}

#[test]
fn skip_special_tokens_and_skip_prompt() {
    let tokenizer = common::byte_level();
    let start = tokenizer.token_to_id("<|im_start|>").unwrap();
    let end = tokenizer.token_to_id("<|im_end|>").unwrap();
    let mut answer = vec![start];
    answer.extend(ids("assistant"));
    answer.push(end);
    let options = guarded().skip_prompt(true).skip_special_tokens(true);
    let (mut producer, stream) = TextIteratorStreamer::new(tokenizer.clone(), options);
    producer.put(&ids("the prompt")).unwrap();
    producer.put(&answer).unwrap();
    producer.end();
    assert_eq!(stream.map(Result::unwrap).collect::<String>(), "assistant");
}

#[test]
fn batch_put_of_the_wrong_size_is_an_error() {
    let (mut producers, _streams) = textstream::batch(2, || {
        TextIteratorStreamer::new(common::byte_level().clone(), StreamOptions::default())
    });
    assert_eq!(
        producers.put(&[&[1][..]]),
        Err(BatchError::WrongSize {
            expected: 2,
            got: 1
        })
    );
}
