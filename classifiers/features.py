"""Features: the one function that both training and serving call.

Hashed word 1-2-grams and byte n-grams inside words (no vocabulary, so no prompt text is ever stored with a
model) plus a few structural counts. Words hash with CRC-32, byte n-grams with a polynomial hash computed
for all positions at once in numpy: stable across processes, platforms and library versions, and cheap
enough to meet a 1 ms p99 per prompt (scikit-learn's HashingVectorizer spends ~0.3 ms per call on
validation alone, and a Python loop over character n-grams ~2 ms on a long prompt)."""

from __future__ import annotations

import array
import itertools
import math
import re
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from classifiers.answer import ANSWER_STRUCTURE, answer_structure, split_answer_text
from classifiers.tasks import TASKS, task_kind

__all__ = ["STRUCTURE", "FeatureSpec", "Featurizer", "structure"]

_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_CHOICE = re.compile(r"^\s*[A-D][.)]\s", re.M)
_SENTENCE = re.compile(r"[.!?](?:\s|$)")

STRUCTURE = (
    "log_chars",
    "log_words",
    "digit_share",
    "log_numbers",
    "log_math",
    "log_code",
    "questions",
    "choices",
    "log_sentences",
    "log_lines",
    "upper_share",
    "long_words",
)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Everything that decides the feature space; saved with a model and checked on load."""

    word_bits: int = 18  # word 1-2-grams hash into 2**word_bits columns
    char_ngrams: tuple[int, int] = (3, 5)  # byte n-grams within space-padded words
    char_bits: int = 18  # 0: no character n-grams
    structure: bool = True
    structure_weight: float = 1.0  # >1 lets the ridge lean on structure, which transfers across domains
    max_chars: int = 2000  # longer prompts are read up to here: bounds scoring time
    # An answer scorer's text is answer_text(prompt, answer): the prompt's features, the same features of the
    # answer in a second block, then the answer's own structure (classifiers.answer).
    answer: bool = False
    # Task-type indicators (classifiers.tasks) after the structure counts: what kind of request a prompt is.
    tasks: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        # Files written before answer scorers and task indicators existed stay byte for byte the same.
        for name in ("answer", "tasks"):
            if not data[name]:
                del data[name]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(
            word_bits=int(data["word_bits"]),
            char_ngrams=(int(data["char_ngrams"][0]), int(data["char_ngrams"][1])),
            char_bits=int(data["char_bits"]),
            structure=bool(data["structure"]),
            structure_weight=float(data["structure_weight"]),
            max_chars=int(data["max_chars"]),
            answer=bool(data.get("answer", False)),
            tasks=bool(data.get("tasks", False)),
        )

    @property
    def char_offset(self) -> int:
        return 1 << self.word_bits

    @property
    def structure_offset(self) -> int:
        return self.char_offset + ((1 << self.char_bits) if self.char_bits else 0)

    @property
    def task_offset(self) -> int:
        return self.structure_offset + (len(STRUCTURE) if self.structure else 0)

    @property
    def text_width(self) -> int:
        """Columns for one text (the prompt, or the answer of an answer scorer)."""
        return self.task_offset + (len(TASKS) if self.tasks else 0)

    @property
    def width(self) -> int:
        return 2 * self.text_width + len(ANSWER_STRUCTURE) if self.answer else self.text_width


_DIGITS = b"0123456789"
_UPPERS = bytes(range(65, 91))
_LOWERS = bytes(range(97, 123))
_MATH_BYTES = b"=+*/^<>$"
_MATH_WORDS = ("\\frac", "\\sqrt", "solve", "calculate", "how many", "how much")
_CODE_MARKS = ("```", "def ", "class ", "return", "{", "}", ";", "function", "import", "=>")


def _count(data: bytes, chars: bytes) -> int:
    return len(data) - len(data.translate(None, chars))


def structure(text: str) -> list[float]:
    """Scale-free counts in roughly [0, 3], so that one regularisation strength suits them and n-grams.
    Counted on bytes with C-level primitives: this runs on every routed request."""
    data = text.encode("utf-8")
    lowered = text.lower()
    chars = len(text) or 1
    words = text.split()
    upper = _count(data, _UPPERS)
    letters = upper + _count(data, _LOWERS)
    return [
        math.log1p(len(text)) / 4,
        math.log1p(len(words)) / 3,
        _count(data, _DIGITS) / chars * 10,
        math.log1p(len(_NUMBER.findall(text))) / 2,
        math.log1p(_count(data, _MATH_BYTES) + sum(map(lowered.count, _MATH_WORDS))) / 2,
        math.log1p(sum(map(lowered.count, _CODE_MARKS))) / 2,
        min(text.count("?"), 5) / 2,
        min(len(_CHOICE.findall(text)), 6) / 4,
        math.log1p(len(_SENTENCE.findall(text))) / 2,
        math.log1p(text.count("\n")) / 2,
        (upper / letters * 5) if letters else 0.0,
        len([w for w in words if len(w) >= 10]) / (len(words) or 1) * 5,
    ]


_PRIME = np.uint64(0x100000001B3)
_MIX = np.uint64(0xFF51AFD7ED558CCD)
_SHIFT = np.uint64(33)
_MASK64 = (1 << 64) - 1


def _block(cols: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashed columns (repeats allowed) with values 1/||counts||, so that summing repeats gives the
    L2-normalised count. A dot product sums repeats by itself; no per-prompt dedup is needed."""
    n = len(cols)
    if n == 0:
        return cols, np.zeros(0, np.float32)
    if n < 256:  # numpy's per-call overhead dominates small blocks: count in Python
        counts = Counter(cols.tolist()).values()
        norm = math.sqrt(sum(c * c for c in counts))
        return cols + offset, np.full(n, 1.0 / norm, np.float32)
    ordered = np.sort(cols)
    runs = np.diff(np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1], [True]))))
    norm = math.sqrt(float(np.dot(runs, runs)))
    return ordered + offset, np.full(n, 1.0 / norm, np.float32)


def _word_hashes(words: list[str]) -> map[int]:
    """CRC-32 of each word 1- and 2-gram, in UTF-8; map() over C functions keeps Python frames out of the loop."""
    grams = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    return map(zlib.crc32, map(str.encode, grams))


def _word_columns(words: list[str], buckets: int) -> np.ndarray:
    return np.fromiter(_word_hashes(words), np.int64) & (buckets - 1)


def _char_columns(lowered: str, lo: int, hi: int, buckets: int) -> np.ndarray:
    """Byte n-grams (lo..hi) of the words, each word padded with a space on both sides, hashed in bulk.

    On " w1 w2 ... " the grams that lie within one padded word are exactly those with no space inside
    (a space may only be the first or last byte). The hash of an n-gram extends that of its (n-1)-prefix,
    so all lengths cost a few vector operations each."""
    data = np.frombuffer((" " + " ".join(lowered.split()) + " ").encode("utf-8"), dtype=np.uint8)
    size = len(data)
    if size < lo:
        return np.zeros(0, np.int64)
    spaces = np.concatenate(([0], np.cumsum(data == 32)))
    codes = data.astype(np.uint64)
    count = size - lo + 1
    h = codes[:count].copy()
    for k in range(1, lo):
        h = h * _PRIME + codes[k : k + count]
    parts = []
    n = lo
    while True:
        inside = spaces[n - 1 : n - 1 + count] - spaces[1 : 1 + count]  # spaces strictly inside each gram
        parts.append(h[inside == 0] ^ np.uint64((n * int(_MIX)) & _MASK64))  # salt by length
        if n == hi or count == 1:
            break
        count -= 1
        h = h[:count] * _PRIME + codes[n : n + count]
        n += 1
    mixed = np.concatenate(parts)
    mixed ^= mixed >> _SHIFT
    mixed *= _MIX
    mixed ^= mixed >> _SHIFT
    return (mixed & np.uint64(buckets - 1)).astype(np.int64)


_SMALL = 256  # below this many characters the features are computed in Python: numpy's per-call cost dominates


def _char_columns_small(lowered: str, lo: int, hi: int, buckets: int) -> list[int]:
    """_char_columns in plain Python, the same hashes (in another order): for short texts, where a few dozen
    grams cost less than numpy's per-call overhead on a dozen small arrays. The grams within padded words are
    those of each word padded on its own, and each length extends the hash of the one before."""
    mask, prime, mix, top = _MASK64, int(_PRIME), int(_MIX), buckets - 1
    salts = [(n * mix) & mask for n in range(hi + 1)]
    out: list[int] = []
    append = out.append
    for word in lowered.split():
        data = b" " + word.encode("utf-8") + b" "
        size = len(data)
        for start in range(size - lo + 1):
            h = data[start]
            for k in range(start + 1, start + lo):
                h = (h * prime + data[k]) & mask
            end = min(start + hi, size)
            n = lo
            while True:
                x = h ^ salts[n]
                x ^= x >> 33
                x = (x * mix) & mask
                x ^= x >> 33
                append(x & top)
                if start + n >= end:
                    break
                h = (h * prime + data[start + n]) & mask
                n += 1
    return out


def _block_small(cols: list[int], offset: int) -> tuple[list[int], list[float]]:
    if not cols:
        return [], []
    norm = math.sqrt(sum(c * c for c in Counter(cols).values()))
    return [c + offset for c in cols], [1.0 / norm] * len(cols)


class Featurizer:
    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec

    def row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Sparse features of one prompt: (column indices, values); a column may repeat, values add up."""
        if not self.spec.answer:
            return self._text_row(text)
        prompt, answer = split_answer_text(text)
        p_idx, p_val = self._text_row(prompt)
        a_idx, a_val = self._text_row(answer)
        s_val = np.asarray(answer_structure(prompt, answer), np.float32)
        s_idx = np.arange(len(s_val), dtype=np.int64) + 2 * self.spec.text_width
        return np.concatenate([p_idx, a_idx + self.spec.text_width, s_idx]), np.concatenate([p_val, a_val, s_val])

    def _text_row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        spec = self.spec
        text = text[: spec.max_chars]
        lowered = text.lower()
        if len(text) < _SMALL:
            return self._small_row(text, lowered)
        return self._numpy_row(text, lowered)

    def _numpy_row(self, text: str, lowered: str) -> tuple[np.ndarray, np.ndarray]:
        spec = self.spec
        parts = [_block(_word_columns(_TOKEN.findall(lowered), 1 << spec.word_bits), 0)]
        if spec.char_bits:
            lo, hi = spec.char_ngrams
            parts.append(_block(_char_columns(lowered, lo, hi, 1 << spec.char_bits), spec.char_offset))
        if spec.structure:
            values = np.asarray(structure(text), np.float32) * np.float32(spec.structure_weight)
            parts.append((np.arange(len(values), dtype=np.int64) + spec.structure_offset, values))
        if spec.tasks:
            parts.append(
                (np.arange(len(TASKS), dtype=np.int64) + spec.task_offset, np.asarray(task_kind(text), np.float32))
            )
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def short_row(self, text: str) -> tuple[list[int], array.array[float]] | None:
        """row() as plain Python lists (the values rounded to float32, as row() gives them) for a text short
        enough to take the plain-Python path, else None. Scoring one short prompt needs no numpy call then:
        under load each numpy call costs several µs more than in a tight loop (its code is cold in the CPU's
        caches), and a short prompt made a dozen of them."""
        text = text[: self.spec.max_chars]
        if self.spec.answer or len(text) >= _SMALL:
            return None
        idx, val = self._small_lists(text, text.lower())
        return idx, array.array("f", val)

    def _small_row(self, text: str, lowered: str) -> tuple[np.ndarray, np.ndarray]:
        """_text_row for a short text: the same columns and values, built as lists and converted once."""
        idx, val = self._small_lists(text, lowered)
        return np.array(idx, dtype=np.int64), np.array(val, dtype=np.float32)

    def _small_lists(self, text: str, lowered: str) -> tuple[list[int], list[float]]:
        spec = self.spec
        word_top = (1 << spec.word_bits) - 1
        idx, val = _block_small([h & word_top for h in _word_hashes(_TOKEN.findall(lowered))], 0)
        if spec.char_bits:
            lo, hi = spec.char_ngrams
            i2, v2 = _block_small(_char_columns_small(lowered, lo, hi, 1 << spec.char_bits), spec.char_offset)
            idx += i2
            val += v2
        if spec.structure:
            counts = structure(text)
            idx += range(spec.structure_offset, spec.structure_offset + len(STRUCTURE))
            if spec.structure_weight == 1.0:  # x * 1 is exact in float32: skip numpy
                val += counts
            else:  # multiplied in float32, as _text_row does: the same bits
                val += (np.asarray(counts, np.float32) * np.float32(spec.structure_weight)).tolist()
        if spec.tasks:  # 0/1 values: exact in float32
            idx += range(spec.task_offset, spec.task_offset + len(TASKS))
            val += task_kind(text)
        return idx, val
