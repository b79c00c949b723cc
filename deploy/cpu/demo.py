"""What `./dev run` shows once the local stack is up: routing, a tool call and the cascade, on real answers.

    python deploy/cpu/demo.py ROUTED_URL CASCADE_URL
Each line: the model that answered, the classifier's score, the reason, and the first line of the answer.
"""

from __future__ import annotations

import sys
from typing import Any

import httpx

EASY = "What is the capital of France? Answer in one word."
HARD = (
    "A train leaves a station at 3 pm at 60 km/h; a second train leaves the same station at 4 pm at 90 km/h on "
    "the same track. How many kilometres from the station does the second train catch the first, and at what time?"
)
UNSURE = "Continue this sequence of made-up words: blorf, quandle, zix,"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _first_line(reply: dict[str, Any]) -> str:
    message = reply["choices"][0]["message"]
    if message.get("tool_calls"):
        call = message["tool_calls"][0]["function"]
        return f"tool call {call['name']}({call['arguments']})"
    text = (message.get("content") or "").strip()
    return (text.splitlines() or [""])[0][:100]


def ask(url: str, prompt: str, **extra: Any) -> str:
    body = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": 48, **extra}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    if r.status_code != 200:
        return f"HTTP {r.status_code}: {r.text[:200]}"
    h = r.headers
    why = f" ({h['x-triage-escalation']})" if "x-triage-escalation" in h else ""
    return (
        f"model={h['x-triage-model']} score={h['x-triage-score']} reason={h['x-triage-reason']}{why}\n"
        f"      answer: {_first_line(r.json())}"
    )


def main(routed: str, cascade: str) -> None:
    print('1. Routing (model "auto"): the classifier scores each prompt, the policy picks the model')
    for prompt in (EASY, HARD):
        print(f"   > {prompt.splitlines()[0][:80]}")
        print(f"      {ask(routed, prompt, temperature=0)}")
    print("2. Tool calls, passed through to the worker (vLLM's hermes parser)")
    weather = "What is the weather in Paris?"
    named = {"type": "function", "function": {"name": "get_weather"}}
    print(f"   > {weather}   (tool_choice: the get_weather tool)")
    print(f"      {ask(routed, weather, tools=[WEATHER_TOOL], tool_choice=named, temperature=0)}")
    print(f"   > {weather}   (tool_choice: auto; a 135M model mostly answers in text)")
    print(f"      {ask(routed, weather, tools=[WEATHER_TOOL], tool_choice='auto', temperature=0)}")
    print("3. The cascade: the small model drafts; a draft it is unsure of goes to the large model")
    for prompt in (EASY, UNSURE):
        print(f"   > {prompt}")
        print(f"      {ask(cascade, prompt, temperature=0)}")
    print("Both workers serve SmolLM2-135M-Instruct: real answers, but not the quality gap of a GPU pair.")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: demo.py ROUTED_URL CASCADE_URL")
    main(sys.argv[1], sys.argv[2])
