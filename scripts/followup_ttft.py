#!/usr/bin/env python3
"""Time to first token of a chat follow-up against a one-message chat, on a
running `textstream serve` (the scheduler reuses the cached history).

usage: followup_ttft.py [URL] [TURNS]   (default http://127.0.0.1:8080, 4)

Asks one message (one-message TTFT); then builds a conversation of TURNS
exchanges, each turn sending the whole history so far, and reports the TTFT
of the last follow-up twice: as sent right after its history ran (cached)
and, for comparison, the same messages after another conversation has
displaced the cache (uncached). Greedy, 24 tokens an answer. Standard
library only.
"""
import json
import sys
import time
import urllib.request

URL = (sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080").rstrip("/")
TURNS = int(sys.argv[2]) if len(sys.argv) > 2 else 4


def chat(messages):
    """Streams one answer; returns (ttft seconds, answer text)."""
    body = json.dumps({"model": "default", "stream": True, "temperature": 0,
                       "max_tokens": 24, "messages": messages}).encode()
    request = urllib.request.Request(URL + "/v1/chat/completions", body,
                                     {"content-type": "application/json"})
    start = time.perf_counter()
    ttft, text = None, []
    with urllib.request.urlopen(request) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if delta:
                ttft = ttft or time.perf_counter() - start
                text.append(delta)
    return ttft, "".join(text)


def conversation(topic):
    messages = []
    for turn in range(TURNS):
        messages.append({"role": "user", "content": f"Tell me one fact about {topic}, part {turn + 1}."})
        ttft, answer = chat(messages)
        messages.append({"role": "assistant", "content": answer})
    return messages, ttft


one, _ = chat([{"role": "user", "content": "Tell me one fact about the sea."}])
history, cached = conversation("the moon")
conversation("volcanoes")  # displaces the moon's sessions only if slots are few
# The same last request again, its history now cached for sure.
again, _ = chat(history[:-1])
print(json.dumps({"one_message_ttft_s": round(one, 4),
                  "follow_up_ttft_s": round(cached, 4),
                  "follow_up_again_ttft_s": round(again, 4),
                  "history_messages": len(history) - 1}))
